"""benchmarks/: a contender's failing child process is an error that names the contender and quotes the
child's error (traceback / stderr tail, or its signal), never a hang and never a bare CalledProcessError;
bench_classifier checks its native path against the reference before timing. Tiny sizes: seconds."""

import argparse
import faulthandler
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)

from _child import ChildError, run_forked, run_script, run_script_json  # noqa: E402

HANG_S = 60  # far above what any test here needs: a blocked parent fails instead of hanging the suite


@pytest.fixture(autouse=True)
def keep_sys_path():
    """Importing a benchmark may put paths on sys.path; other tests hand sys.path to child processes."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture(autouse=True)
def no_hang():
    def on_alarm(signum, frame):
        raise TimeoutError(f"hung: the parent still waited for its child after {HANG_S} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(HANG_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def kill_self(sig):
    """A contender that dies of signal `sig` (quietly: no faulthandler dump) in its child process."""
    def fn(*_):
        faulthandler.disable()
        os.kill(os.getpid(), sig)
    return fn


# ---- _child.run_script / run_script_json ---------------------------------------------------------------

def test_run_script_error_quotes_the_childs_stderr_tail():
    code = "import sys\nfor i in range(100): print(f'log line {i}', file=sys.stderr)\nraise ValueError('boom 42')"
    with pytest.raises(ChildError) as e:
        run_script(py(code), "contender 'x' (size 7)")
    msg = str(e.value)
    assert "contender 'x' (size 7)" in msg and "exited with status 1" in msg
    assert "ValueError: boom 42" in msg and "log line 99" in msg
    assert "log line 50" not in msg  # only the tail


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_run_script_names_the_signal(sig):
    with pytest.raises(ChildError, match=f"contender 'x': child killed by {sig.name}"):
        run_script(py(f"import os; os.kill(os.getpid(), {int(sig)})"), "contender 'x'")


def test_run_script_ok_and_json():
    assert run_script(py("print('a'); print('b')"), "x") == "a\nb\n"
    assert run_script_json(py("print('log'); print('{\"s\": 1.5}')"), "x") == {"s": 1.5}
    with pytest.raises(ChildError, match="contender 'x': child exited 0 without a JSON result"):
        run_script_json(py("print('no json')"), "contender 'x'")


def test_run_script_timeout_kills_the_child_and_says_so():
    code = "import sys, time; print('started', file=sys.stderr, flush=True); time.sleep(60)"
    with pytest.raises(ChildError) as e:
        run_script(py(code), "contender 'slow'", timeout=1)
    assert "contender 'slow': child ran past 1 s and was killed" in str(e.value) and "started" in str(e.value)
    assert run_script_json(py("print('{\"s\": 2}')"), "x", timeout=30) == {"s": 2}


def test_tokenizer_child_error_is_quoted_and_a_failed_fastlm_contender_fails_the_run(capsys):
    import bench_tokenizer

    args = argparse.Namespace(mb=0.01, repeats=1, tmp="/nonexistent-dir")
    r = bench_tokenizer.spawn(args, "train", "fastlm-nosuch", "300", timeout=60)
    assert r["seconds"] != r["seconds"] and "contender train fastlm-nosuch 300" in r["error"]
    assert "Traceback" in capsys.readouterr().err  # the child's error, not only a status
    assert bench_tokenizer.FAILED and "fastlm-nosuch" in bench_tokenizer.FAILED[-1]
    bench_tokenizer.FAILED.clear()


def test_run_script_stream_shows_the_output_and_keeps_the_tail(capfd):
    code = "import sys; print('to stdout'); print('progress', file=sys.stderr); raise KeyError('nope')"
    with pytest.raises(ChildError) as e:
        run_script(py(code), "contender 'x'", stream=True)
    assert "KeyError: 'nope'" in str(e.value) and "progress" in str(e.value)
    out, err = capfd.readouterr()
    assert "to stdout" in out and "progress" in err and "KeyError: 'nope'" in err


# ---- _child.run_forked -----------------------------------------------------------------------------------

def test_run_forked_returns_the_result():
    big = list(range(200_000))  # more than a pipe buffer
    assert run_forked(lambda a, b: (a, b[-1]), "x", 1, big) == (1, 199_999)


def test_run_forked_quotes_the_childs_traceback():
    def contender():
        raise RuntimeError("child failed: 17")

    with pytest.raises(ChildError) as e:
        run_forked(contender, "contender 'y'")
    msg = str(e.value)
    assert msg.startswith("contender 'y': child raised RuntimeError: child failed: 17")
    assert "in contender" in msg  # the child's traceback


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_run_forked_child_death_is_an_error_not_a_hang(sig):
    with pytest.raises(ChildError, match=f"contender 'y': child killed by {sig.name}.* before sending its result"):
        run_forked(kill_self(sig), "contender 'y'")


def test_run_forked_exit_status():
    with pytest.raises(ChildError, match="contender 'y': child exited with status 3"):
        run_forked(os._exit, "contender 'y'", 3)


def test_run_forked_spawn():
    assert run_forked(divmod, "x", 7, 2, method="spawn") == (3, 1)
    with pytest.raises(ChildError, match="child raised ZeroDivisionError"):
        run_forked(divmod, "x", 1, 0, method="spawn")
    with pytest.raises(ChildError, match="killed by SIGKILL"):
        run_forked(signal.raise_signal, "x", signal.SIGKILL, method="spawn")


# ---- the benchmark scripts -------------------------------------------------------------------------------

def test_pretokenize_script_exits_with_the_childs_error():
    cmd = [sys.executable, os.path.join(BENCH, "bench_pretokenize.py"), "--patterns", "nosuch", "--repeats", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode != 0
    assert "contender 'regex.findall', pattern 'nosuch'" in r.stderr and "KeyError: 'nosuch'" in r.stderr


def test_normalize_child_error_is_quoted():
    import bench_normalize

    with pytest.raises(ChildError) as e:
        bench_normalize.run("html", "no such contender", 1, 1)
    assert "ValueError: no such contender" in str(e.value) and "corpus 'html'" in str(e.value)


def test_classifier_child_error_is_quoted(monkeypatch):
    import bench_classifier

    monkeypatch.setattr(bench_classifier, "CONTENDERS", [("predict", ["no-such"])])
    monkeypatch.setattr(sys, "argv", ["bench_classifier.py", "--mb", "0.01", "--repeats", "1"])
    with pytest.raises(ChildError) as e:
        bench_classifier.main()
    assert "contender 'no-such'" in str(e.value) and "unknown contender no-such" in str(e.value)


def test_train_child_error_is_quoted(tmp_path, capfd):
    import bench_train

    cfg = {"model": {"size": "tiny"}, "data": {"seq_len": 8}, "micro_batch": 1, "no_such_option": 1}
    with pytest.raises(ChildError) as e:
        bench_train._run_child("fastlm", {"cfg": cfg, "eval_steps": 1}, str(tmp_path), 1)
    assert "contender 'fastlm' (model tiny, 1 x 8 tokens/step)" in str(e.value)
    assert "unknown key(s) ['no_such_option']" in str(e.value)
    assert "no_such_option" in capfd.readouterr().err  # the child's stderr still streams


def test_posttrain_stage_death_is_an_error_not_a_hang():
    import bench_posttrain

    with pytest.raises(ChildError, match="stage 'sft-packed': child killed by SIGKILL"):
        bench_posttrain.in_child("stage 'sft-packed'", signal.raise_signal, signal.SIGKILL)


def test_dedup_contender_error_names_it():
    import bench_dedup

    def peer(docs, args):
        raise ImportError("No module named 'datasketch'")

    err = bench_dedup.run("datasketch MinHash+LSH", peer, ["a b c"], argparse.Namespace(repeats=1, peer_repeats=1))
    assert "contender 'datasketch MinHash+LSH'" in err and "No module named 'datasketch'" in err


def test_dedup_contender_death_is_an_error_not_a_hang(monkeypatch):
    import bench_dedup

    monkeypatch.setattr(bench_dedup, "fastlm_simhash", kill_self(signal.SIGSEGV))
    monkeypatch.setattr(sys, "argv", ["bench_dedup.py", "--docs", "40", "--peer-docs", "20", "--repeats", "1",
                                      "--peer-repeats", "1", "--threads", "1"])
    with pytest.raises(SystemExit) as e:  # fastlm failed: reported by name and signal, exit status 1
        bench_dedup.main()
    assert "contender 'fastlm simhash'" in str(e.value.code) and "SIGSEGV" in str(e.value.code)


@pytest.fixture
def tiny_bpe(monkeypatch):
    monkeypatch.setenv("RAYON_RS_NUM_CPUS", os.environ.get("RAYON_RS_NUM_CPUS", "1"))  # undo its import's setdefault
    import bench_bpe

    monkeypatch.setattr(bench_bpe, "corpus", lambda: "the quick brown fox jumps over the lazy dog. " * 20)
    monkeypatch.setattr(sys, "argv", ["bench_bpe.py", "--repeats", "1", "--merges", "8", "--ref-merges", "4"])
    return bench_bpe


def test_bpe_contender_death_is_an_error_not_a_hang(tiny_bpe, monkeypatch):
    monkeypatch.setattr(tiny_bpe, "hf_train", kill_self(signal.SIGKILL))
    with pytest.raises(ChildError) as e:
        tiny_bpe.main()
    assert "contender 'HF tokenizers BpeTrainer, 4 merges'" in str(e.value) and "SIGKILL" in str(e.value)


def test_bpe_contender_error_names_it(tiny_bpe, monkeypatch):
    def hf_train(*_):
        raise RuntimeError("hf exploded")

    monkeypatch.setattr(tiny_bpe, "hf_train", hf_train)
    with pytest.raises(ChildError) as e:
        tiny_bpe.main()
    assert "contender 'HF tokenizers BpeTrainer, 4 merges'" in str(e.value) and "hf exploded" in str(e.value)


# ---- bench_classifier's correctness check ----------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier_data():
    import bench_classifier

    return bench_classifier.corpus(0.02)


def test_classifier_check_passes_on_the_real_native_path(classifier_data, capsys):
    import bench_classifier

    bench_classifier.check_native(*classifier_data)
    assert "== reference" in capsys.readouterr().out


def test_classifier_check_fails_on_wrong_probabilities(classifier_data, monkeypatch):
    import bench_classifier
    from fastlm.data.classifier import TextClassifier

    right = TextClassifier.predict_proba
    monkeypatch.setattr(TextClassifier, "predict_proba", lambda self, texts, **kw: right(self, texts, **kw)[:, ::-1])
    with pytest.raises(SystemExit, match=r"native predict_proba\(num_threads=1\) != reference"):
        bench_classifier.check_native(*classifier_data)


def test_classifier_check_fails_on_wrong_lexicon_counts(classifier_data, monkeypatch):
    import bench_classifier
    from fastlm.data.lexicon import LexiconFilter

    right = LexiconFilter.count

    def count(self, texts):
        hits, words = right(self, texts)
        return [hits[0] + 1] + hits[1:], words

    monkeypatch.setattr(LexiconFilter, "count", count)
    with pytest.raises(SystemExit, match=r"native lexicon \(hits, words\) != reference .* first doc 0"):
        bench_classifier.check_native(*classifier_data)


def test_classifier_checks_before_timing(monkeypatch):
    import bench_classifier
    from fastlm.data.classifier import TextClassifier

    def timed(*_, **__):
        raise AssertionError("a contender was timed before the check")

    right = TextClassifier.predict_proba
    monkeypatch.setattr(TextClassifier, "predict_proba", lambda self, texts, **kw: right(self, texts, **kw) + 0.01)
    monkeypatch.setattr(bench_classifier, "run_script_json", timed, raising=False)
    monkeypatch.setattr(sys, "argv", ["bench_classifier.py", "--mb", "0.01", "--repeats", "1"])
    with pytest.raises(SystemExit, match="check failed: native predict_proba"):
        bench_classifier.main()
