"""The generation job's writer thread: order, back-pressure, errors."""

from __future__ import annotations

import threading
import time

import pytest

from fewstep.jobs.image_writer import ImageWriter


def test_tasks_run_in_submission_order_and_close_waits_for_all():
    done = []
    with ImageWriter(depth=2) as writer:
        for i in range(20):
            writer.submit(lambda i=i: (time.sleep(0.001), done.append(i)))
    assert done == list(range(20))


def test_submit_blocks_once_depth_tasks_wait():
    release, submitted = threading.Event(), []
    writer = ImageWriter(depth=2)

    def producer():
        for i in range(5):
            writer.submit(release.wait)
            submitted.append(i)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    time.sleep(0.3)
    # one task runs (blocked), two wait in the queue, the fourth submit blocks
    assert submitted == [0, 1, 2]
    release.set()
    thread.join(5)
    writer.close()
    assert submitted == [0, 1, 2, 3, 4]


def test_an_error_in_the_writer_is_raised_in_the_submitting_thread():
    done = []

    def disk_full():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"), ImageWriter() as writer:
        writer.submit(lambda: done.append(1))
        writer.submit(disk_full)
        writer.submit(lambda: done.append(2))  # dropped: written work stops at the first error
    assert done == [1]


def test_leaving_on_an_error_still_finishes_what_was_handed_over():
    done = []
    with pytest.raises(KeyError), ImageWriter() as writer:
        writer.submit(lambda: (time.sleep(0.05), done.append(1)))
        raise KeyError("the GPU thread failed")
    assert done == [1]
