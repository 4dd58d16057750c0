"""ma2mba Gradio Space (placeholder until the video model and sessions land)."""

import os

import gradio as gr

with gr.Blocks(title="Video-Ma²mba") as demo:
    gr.Markdown(
        "# Video-Ma²mba\n"
        "Coming next: upload a video, watch it stream frame by frame into a Mamba-2 state at 1 FPS, "
        "then chat about it — and a Memory lab comparing gradient-checkpointing modes."
    )

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
