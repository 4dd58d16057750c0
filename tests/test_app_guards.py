"""The Space guards itself: a packaged model that cannot be loaded, local folders on a public Space, "As of"."""

import gradio as gr
import pytest

from ma2mba.hub import ModelFileError


@pytest.fixture
def app_without_its_model(monkeypatch):
    import app

    def broken(name=None, device="cpu"):
        if name is None:
            raise ModelFileError("/srv/assets/ma2mba-shapes/model.safetensors cannot be read as weights (truncated)")
        raise AssertionError("only the packaged model is loaded here")

    monkeypatch.setattr(app, "load_model", broken)
    monkeypatch.setattr(app, "MODELS", app.Models())
    return app


def test_watching_says_the_packaged_model_could_not_be_loaded(app_without_its_model):
    app = app_without_its_model
    assert not app.packaged_is_loaded()
    with pytest.raises(gr.Error, match="packaged model could not be loaded.*model.safetensors cannot be read"):
        next(app.watch(str(app.EXAMPLES[0]["path"]), "fastest", None))
    assert "could not be loaded" in app.model_card(None) and "truncated" in app.model_card(None)
    assert "truncated" in app.packaged_error_note()


def test_a_public_space_refuses_local_folders_without_saying_what_is_there(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import app

    monkeypatch.setitem(app.SETTINGS, "allow_local_models", False)
    for name in ("/etc", str(tmp_path), "assets/ma2mba-shapes", "../x", "~"):
        _, status, _ = app.load_other(name)
        assert (
            status.startswith("⚠ This Space loads the packaged model and Hugging Face repo ids") and name not in status
        )
    _, status, _ = app.load_other("someone/no-such-model")  # a repo id passes the gate (and is not on the Hub here)
    assert "Hub" in status and "This Space loads" not in status


def write_video(path, frames, fps=1):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_a_video_of_photographs_is_flagged_and_a_shapeworld_clip_is_not(tmp_path):
    import skimage.data
    from test_novelty import load_benchmark

    import app

    bench = load_benchmark()
    photos = write_video(tmp_path / "photos.mp4", bench.photo_video(skimage.data.astronaut(), 0))
    shapes = app.EXAMPLES[0]["path"]
    last = {}
    for name, path in (("photos", photos), ("shapes", shapes)):
        for outputs in app.watch(str(path), "fastest", None):
            last[name] = outputs[2] if isinstance(outputs[2], str) else last.get(name, "")
    assert "looks unlike ShapeWorld" in last["photos"]
    assert "Done" in last["shapes"] and "looks unlike" not in last["shapes"]
