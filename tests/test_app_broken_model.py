"""The Space with a packaged model that cannot be loaded stays up and says why, on each tab."""

import gradio as gr
import pytest

from ma2mba.hub import ModelFileError


@pytest.fixture
def app_without_its_model(monkeypatch):
    import ma2mba.packaged

    def broken(name=None, device="cpu"):
        if name is None:
            raise ModelFileError("/srv/assets/ma2mba-shapes/model.safetensors cannot be read as weights (truncated)")
        raise AssertionError("only the packaged model is loaded here")

    monkeypatch.setattr(ma2mba.packaged, "load_model", broken)
    import app

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
