"""configs/metadata.json against the MONAI bundle metadata schema, offline (the zoo's own check)."""

import json
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
# offline copy of the schema the metadata names; its source URL is in docs/README.md
SCHEMA = ROOT / "configs" / "schema" / "meta_schema_20240725.json"


@pytest.fixture(scope="module")
def metadata():
    return json.loads((ROOT / "configs" / "metadata.json").read_text())


def test_metadata_follows_schema(metadata):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(metadata, schema)
    assert Path(metadata["schema"]).name == "meta_schema_20240725.json"


def test_version_is_in_changelog(metadata):
    assert metadata["version"] in metadata["changelog"], "add the new version to the changelog"


def test_versions_match_requirements(metadata):
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.lower()] = version
    assert metadata["monai_version"] == pins["monai"]
    assert metadata["pytorch_version"] == pins["torch"]
    assert metadata["numpy_version"] == pins["numpy"]
    for name, version in metadata["required_packages_version"].items():
        if name in pins:
            assert pins[name] == version, f"{name}: metadata {version} != requirements {pins[name]}"


def test_metadata_states_research_use_and_references(metadata):
    assert "not for clinical use" in metadata["intended_use"].lower()
    assert any("MedSyn" in ref for ref in metadata["references"])
    image = metadata["lowres_data_format"]["inputs"]["image"]  # network_data_format: the segmentation entry
    assert image["channel_def"] == {"0": "ct", "1": "lobe", "2": "airway", "3": "vessel"}
