"""Per-step logs: a capturing thread's output (print, logging, warnings, tqdm, loguru, tools) goes to its file."""

from __future__ import annotations

import logging
import sys
import threading
import warnings

import pytest

from quantmill import steplog

pytestmark = pytest.mark.fast


def in_thread(work) -> None:
    """Run ``work`` on a thread of its own, as heavy steps run, and re-raise what it raised."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 -- handed to the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


@pytest.fixture
def library():
    """A library's logger with a console handler made before any capture, as Prefect's and transformers' are.

    Calling it makes the handler: pytest swaps ``sys.stderr`` between a fixture's setup and the test.
    """
    logger = logging.getLogger("quantmill.test.library")
    logger.setLevel(logging.INFO)

    def with_console_handler() -> logging.Logger:
        logger.addHandler(logging.StreamHandler(sys.stderr))
        return logger

    yield with_console_handler
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


def test_a_warning_repeated_100_times_is_written_once_with_its_count(tmp_path, library):
    library = library()
    log = tmp_path / "logs" / "v.log"
    cast = "MatMul8bitLt: inputs will be cast"

    def step() -> None:
        with steplog.capture(log, title="quantizing v"), warnings.catch_warnings():
            warnings.simplefilter("always")  # what libraries' catch_warnings blocks amount to: every call warns
            for _ in range(100):
                warnings.warn(cast, UserWarning, stacklevel=1)
            for _ in range(3):
                library.warning("metric acc has no aggregation")

    in_thread(step)
    text = log.read_text()
    assert text.count(cast) == 2, text  # the warning, and its count at the end
    assert text.count("metric acc has no aggregation") == 2, text
    repeated_warning, repeated_record = text.splitlines()[-2:]
    assert repeated_warning.startswith("[repeated 99 more times] ") and repeated_warning.endswith(
        f"UserWarning: {cast}"
    )
    assert (
        repeated_record.startswith("[repeated 2 more times] ") and "WARNING quantmill.test.library" in repeated_record
    )


def test_only_the_capturing_threads_output_lands_in_its_log(tmp_path, capsys, library):
    from loguru import logger as loguru_logger
    from tqdm import tqdm

    library = library()
    log = tmp_path / "v.log"
    entered, main_wrote = threading.Event(), threading.Event()
    sink: list[int] = []

    def step() -> None:
        with steplog.capture(log, title="evaluating v"):
            sink.append(loguru_logger.add(sys.stdout, format="{level} - {message}"))  # as llm-compressor's import does
            entered.set()
            main_wrote.wait(10)
            print("step print")
            library.info("step record")
            loguru_logger.info("step loguru")
            for _ in tqdm(range(50), desc="step bar", mininterval=0):
                pass
            for i in tqdm(range(3), desc="other bar", mininterval=0):
                if i == 1:
                    library.warning("mid-bar warning")

    try:
        worker = threading.Thread(target=step)
        worker.start()
        assert entered.wait(10)
        print("main print")  # the console's own lines, written while the step captures
        library.info("main record")
        loguru_logger.info("main loguru")
        main_wrote.set()
        worker.join()
    finally:
        for sink_id in sink:
            loguru_logger.remove(sink_id)
    text = log.read_text()
    console = capsys.readouterr()
    for line in ("step print", "step record", "INFO - step loguru"):
        assert line in text and line not in console.out + console.err, line
    for line in ("main print", "main record", "main loguru"):
        assert line not in text and line in console.out + console.err, line
    bars = [line for line in text.splitlines() if "step bar" in line]
    assert len(bars) == 1 and "100%" in bars[0], bars  # a progress bar keeps its last state only
    warned = [line for line in text.splitlines() if "mid-bar warning" in line]
    assert warned[0].endswith("library: mid-bar warning")  # a line of its own, not glued to the bar's


def test_verbose_also_streams_to_the_console_and_a_failure_leaves_its_traceback(tmp_path, capsys):
    log = tmp_path / "v.log"

    def step() -> None:
        with steplog.capture(log, title="checking v", verbose=True):
            print("streamed line")
            raise RuntimeError("the step broke")

    with pytest.raises(RuntimeError):
        in_thread(step)
    text = log.read_text()
    assert "streamed line" in text and "streamed line" in capsys.readouterr().err
    assert "RuntimeError: the step broke" in text and "Traceback" in text


def test_a_tools_output_joins_the_step_log(tmp_path):
    from quantmill.llamacpp import run_tool

    log = tmp_path / "v.log"
    with steplog.capture(log, title="quantizing v"):
        output = run_tool([sys.executable, "-c", "print('llama_model_quantize_impl: done')"], what="llama-quantize")
    assert output.strip() == "llama_model_quantize_impl: done"  # the caller still gets the output to parse
    assert "--- llama-quantize (exit 0) ---\nllama_model_quantize_impl: done\n" in log.read_text()


def test_a_heavy_step_reports_its_stage_and_writes_the_variants_log(tmp_path):
    from quantmill import progress
    from quantmill.pipeline import StepSlot
    from quantmill.tasks.steps import run_step

    assert run_step(tmp_path, "gptq-w4", "quantizing", StepSlot(None), lambda x: print("quantized", x) or 7) == 7
    events, _ = progress.read_events(tmp_path)
    assert [(e.variant, e.stage) for e in events] == [("gptq-w4", "quantizing")]
    text = (progress.logs_dir(tmp_path) / "gptq-w4.log").read_text()
    assert text.startswith("=== quantizing gptq-w4 · ") and "quantized cpu" in text


def test_another_process_output_is_written_once_per_distinct_line_with_counts(tmp_path):
    log = tmp_path / "logs" / "v.log"
    output = "loading\n" + "UserWarning: inputs will be cast\n" * 50 + "done\n"

    def step() -> None:
        with steplog.capture(log, title="checking v"):
            steplog.append_output("servable probe (forked process)", output)

    in_thread(step)
    lines = log.read_text().splitlines()
    assert lines[1:5] == [
        "--- servable probe (forked process) ---",
        "loading",
        "UserWarning: inputs will be cast",
        "done",
    ]
    assert lines[-1] == "[repeated 49 more times] UserWarning: inputs will be cast"
