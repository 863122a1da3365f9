"""Reports print model folders without this machine's absolute paths."""

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.report import shown_path


def test_a_folder_inside_the_working_directory_is_shown_relative(tmp_path, monkeypatch):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "models" / "tiny") == "models/tiny"
    assert shown_path("models/tiny") == "models/tiny"


def test_a_folder_elsewhere_or_a_hub_id_is_shown_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_path(DEFAULT_MODEL_DIR) == str(DEFAULT_MODEL_DIR)
    assert shown_path("black-forest-labs/FLUX.1-dev") == "black-forest-labs/FLUX.1-dev"
