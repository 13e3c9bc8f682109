"""Dask collections computed on taskfarm give what Dask's own scheduler gives."""

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest

import taskfarm


def test_an_array_of_100_chunks_matches_the_sync_scheduler(client):
    x = da.random.RandomState(42).random_sample((1000, 1000), chunks=(100, 100))
    assert x.npartitions == 100
    y = (x + x.T).mean(axis=0)
    expected = y.compute(scheduler="sync")
    got = dask.compute(y, scheduler=client.get)[0]
    np.testing.assert_allclose(got, expected)
    # the default client is Dask's default scheduler, as with distributed
    np.testing.assert_allclose(y.compute(), expected)
    assert dask.config.get("scheduler") == client.get


def test_delayed_functions_and_a_bag_word_count(client):
    @dask.delayed
    def inc(v):
        return v + 1

    @dask.delayed
    def total(vs):
        return sum(vs)

    result = total([inc(i) for i in range(50)])
    assert result.compute() == result.compute(scheduler="sync") == sum(range(1, 51))

    lines = ["the quick brown fox", "jumps over the lazy dog", "the end"] * 30
    bag = db.from_sequence(lines, npartitions=6)
    counts = bag.str.split().flatten().frequencies()
    assert sorted(counts.compute()) == sorted(counts.compute(scheduler="sync"))
    assert dict(counts.compute())["the"] == 90


def test_persist_keeps_the_data_and_a_second_compute_reuses_it(client, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()

    def expensive(i):
        # each run leaves a file: the count says how often the task ran
        (marks / f"{i}-{np.random.randint(1 << 30)}").touch()
        return np.full(10, i, dtype="float64")

    parts = [dask.delayed(expensive, pure=True)(i) for i in range(8)]
    stacked = da.stack([da.from_delayed(p, shape=(10,), dtype="float64") for p in parts])
    (persisted,) = client.persist([stacked])
    assert len(taskfarm.futures_of(persisted)) == 8
    taskfarm.wait(persisted)
    assert len(list(marks.iterdir())) == 8
    first = persisted.sum().compute()
    second = (persisted * 2).sum().compute()
    assert first == sum(10 * i for i in range(8))
    assert second == 2 * first
    assert len(list(marks.iterdir())) == 8  # nothing ran again


def test_a_failing_dask_task_raises_its_own_exception(client):
    @dask.delayed
    def bad(v):
        raise KeyError(f"missing {v}")

    with pytest.raises(KeyError, match="missing 3"):
        bad(3).compute()


def test_a_dask_graph_can_use_futures_of_the_client(client):
    f = client.submit(lambda: np.arange(5))
    d = dask.delayed(lambda a: int(a.sum()))(f)
    assert d.compute() == 10
