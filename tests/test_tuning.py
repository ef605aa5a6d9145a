"""Matmul choices kept on disk (fusec/tuning.py): what is read back, and when it is not."""

import os

from fusec import tuning
from fusec.kernels.launch import matmul_configs


def test_a_choice_is_read_back_only_while_what_decides_it_is_the_same(tmp_path):
    configs = matmul_configs(1, 4096, 4096, 4096, "bfloat16")
    key = tuning.choice_key("source", (4096, 4096, 4096), "NVIDIA H100", configs)
    tuning.store(tmp_path, key, 2)
    assert tuning.stored(tmp_path, key, len(configs)) == 2
    tuning.store(tmp_path, key, "library")
    assert tuning.stored(tmp_path, key, len(configs)) == "library"
    # another GPU, other sizes, other candidates: other keys
    others = [tuning.choice_key("source", (4096, 4096, 4096), "NVIDIA H200", configs),
              tuning.choice_key("source", (4096, 4096, 2048), "NVIDIA H100", configs),
              tuning.choice_key("source", (4096, 4096, 4096), "NVIDIA H100", configs[:-1])]
    assert len({key, *others}) == 4 and all(tuning.stored(tmp_path, k, len(configs)) is None for k in others)


def test_a_position_out_of_range_or_not_a_position_is_not_read(tmp_path):
    (tmp_path / "matmul").mkdir()
    for i, text in enumerate(["7", "-1", "true", '"fast"', "1.0", "{"]):
        (tmp_path / "matmul" / f"k{i}.json").write_text(text)
        assert tuning.stored(tmp_path, f"k{i}", 4) is None, text


def test_nothing_is_kept_or_read_where_others_may_write(tmp_path):
    for writable in ("", "matmul"):  # the cache directory, or its folder of choices
        shared = tmp_path / f"shared{writable}"
        (shared / "matmul").mkdir(parents=True)
        os.chmod(shared / writable, 0o777)
        tuning.store(shared, "k", 1)
        assert not (shared / "matmul" / "k.json").exists()
        (shared / "matmul" / "k.json").write_text("1")  # written by someone else
        assert tuning.stored(shared, "k", 4) is None
