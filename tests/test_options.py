"""Options are checked where the user passes them: fusec.compile, fusec.inspect and torch.compile's backend."""

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed

import fusec
from fusec.options import Options

BAD = [
    ("strict", "false", "strict must be True or False"),
    ("fuse", "no", "fuse must be True or False"),
    ("horizontal", "yes", "horizontal must be True or False"),
    ("fuse", 1, "fuse must be True or False"),
    ("fuel", True, "fuel must be a non-negative integer or None"),
    ("fuel", -1, "fuel must be a non-negative integer or None"),
    ("fuel", 2.5, "fuel must be a non-negative integer or None"),
    ("streams", 0, "streams must be a positive integer, 'auto' or None"),
    ("streams", True, "streams must be a positive integer, 'auto' or None"),
    ("streams", "many", "streams must be a positive integer, 'auto' or None"),
    ("matmul", "fast", "matmul must be 'auto', 'template' or 'library'"),
    ("cpu", "gpu", "cpu must be 'torch' (run CPU graphs through torch) or 'interpret'"),
    ("cache_dir", 3, "cache_dir must be a path"),
    ("dump_dir", ["d"], "dump_dir must be a path"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_a_bad_option_is_refused_at_compile_time_naming_it(name, value, message):
    with pytest.raises((TypeError, ValueError), match=f"^fusec: {message}.*got {value!r}".replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        fusec.compile(lambda x: x + 1, **{name: value})
    with pytest.raises((TypeError, ValueError), match=name):
        fusec.inspect(lambda x: x + 1, torch.randn(2), options={name: value})


def test_good_options_pass():
    opts = Options.from_user(strict=False, fuse=False, horizontal=False, fuel=0, streams=2, matmul="library",
                             cpu="interpret", cache_dir="somewhere", dump_dir=None)
    assert (opts.fuel, opts.streams, opts.cpu, str(opts.cache_dir)) == (0, 2, "interpret", "somewhere")


def test_cpu_mode_comes_from_the_environment_and_is_checked(monkeypatch):
    monkeypatch.setenv("FUSEC_CPU", "torch")
    assert Options.from_user().cpu == "torch"
    assert Options.from_user(cpu="interpret").cpu == "interpret"  # an argument wins over the environment
    monkeypatch.delenv("FUSEC_CPU")
    assert Options.from_user().cpu == "torch"  # the default: CPU graphs run at eager speed
    monkeypatch.setenv("FUSEC_CPU", "interpreter")
    with pytest.raises(ValueError, match="FUSEC_CPU must be 'torch' or 'interpret', got 'interpreter'"):
        Options.from_user()


def test_torch_compile_options_dict_reaches_fusec(tmp_path):
    fn = lambda x: torch.exp(x) * 3 + 1
    x = torch.randn(4, 8)
    compiled = torch.compile(fn, backend="fusec", options={"streams": 1, "fuse": False, "dump_dir": tmp_path})
    torch.testing.assert_close(compiled(x), fn(x))
    assert "k2" in (tmp_path / "inference_0" / "02_fuse.txt").read_text()  # fuse=False: one kernel per op
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="fusec", mode="default")
    torch.testing.assert_close(compiled(x), fn(x))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"options": {"strict": "false"}}, "strict must be True or False, got 'false'"),
    ({"options": {"fusee": True}}, "unknown option.*fusee"),
    ({"mode": "max-autotune"}, "mode='max-autotune' is Inductor's"),
])
def test_torch_compile_backend_checks_options_too(kwargs, message):
    compiled = torch.compile(lambda x: torch.exp(x) + 1, backend="fusec", **kwargs)
    with pytest.raises(BackendCompilerFailed, match=message):
        compiled(torch.randn(4))


def test_options_built_directly_are_checked_too():
    with pytest.raises(TypeError, match="horizontal must be True or False, got 'yes'"):
        Options(horizontal="yes")
