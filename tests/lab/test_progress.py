"""dlopt.lab.progress: a bar on a terminal, plain lines (no carriage returns) anywhere else."""

import io

from dlopt.lab.progress import EpochProgress, Progress, format_logs, is_terminal


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_is_terminal():
    assert is_terminal(Terminal()) and not is_terminal(io.StringIO()) and not is_terminal(object())
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)


def test_epoch_progress_off_a_terminal_writes_one_line_per_epoch():
    log = io.StringIO()
    shown = EpochProgress(3, stream=log)
    for epoch in range(3):
        shown.epoch_begin(epoch, num_batches=4)
        assert not shown.per_batch  # nothing per batch in a log
        shown.batch_end(0.5, 8)
        shown.epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "val_loss": 0.123456})
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in log.getvalue()
    assert lines[1].startswith("epoch 2/3  loss 0.5  val_loss 0.1235  (")
    assert lines[1].endswith(" s)")


def test_epoch_progress_on_a_terminal_draws_a_bar_and_no_lines():
    tty = Terminal()
    shown = EpochProgress(2, stream=tty)
    shown.epoch_begin(0, num_batches=2)
    assert shown.per_batch
    shown.batch_end(0.25, 8)
    shown.batch_end(0.2, 8)
    shown.epoch_end(0, {"loss": 0.2})
    text = tty.getvalue()
    assert "epoch 1/2" in text and "loss=0.2" in text and "ex_s=" in text
    assert "\r" in text and not any(line.startswith("epoch 1/2  loss") for line in text.split("\r"))


def test_disabled_progress_prints_nothing():
    for stream in (io.StringIO(), Terminal()):
        shown = EpochProgress(1, enabled=False, stream=stream)
        shown.epoch_begin(0, 1)
        shown.epoch_end(0, {"loss": 1.0})
        with Progress(3, enabled=False, stream=stream) as bar:
            bar.update()
            bar.note("done")
        assert stream.getvalue() == ""


def test_progress_notes_stand_in_for_the_bar():
    log, tty = io.StringIO(), Terminal()
    for stream in (log, tty):
        with Progress(2, unit="run", stream=stream) as bar:
            bar.describe("sgd")
            bar.update()
            bar.note("sgd: done")
            bar.update()
    assert log.getvalue() == "sgd: done\n"  # a log gets the notes, no bar
    assert "sgd: done" not in tty.getvalue() and "2/2" in tty.getvalue()  # a terminal, the bar


def test_format_logs():
    assert format_logs({"loss": 0.123456, "accuracy": 1.0}) == "loss 0.1235  accuracy 1"
