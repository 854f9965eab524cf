"""Fixtures of the fuzzing tests: the seed, and the SIIM samples as bases to mutate."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_mutations import Base, converter_bases, scp_base
from pydantic_settings import BaseSettings, SettingsConfigDict


class FuzzSettings(BaseSettings):
    """``PNEUMONODE_TEST_FUZZ_SEED`` replays (or varies) a run; failures print the seed."""

    __test__ = False
    model_config = SettingsConfigDict(env_prefix="PNEUMONODE_TEST_FUZZ_")

    seed: int = 20260611


@pytest.fixture(scope="session")
def fuzz_seed() -> int:
    return FuzzSettings().seed


@pytest.fixture(scope="session")
def scp_bases(siim_sample_dicoms: list[Path]) -> list[Base]:
    """The 10 SIIM files with their JPEG codestream cut to 2 KB (the SCP never decodes it)."""
    return [scp_base(path) for path in siim_sample_dicoms]


@pytest.fixture(scope="session")
def converter_base_dir(
    siim_sample_dicoms: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The SIIM files and re-encodings of some of them (native, RLE, JPEG-LS, JPEG 2000), as
    files that the converter's fuzzing processes read."""
    folder = tmp_path_factory.mktemp("fuzz-bases")
    for number, base in enumerate(converter_bases(siim_sample_dicoms)):
        (folder / f"{number:02d}-{base.name}.dcm").write_bytes(base.data)
    return folder
