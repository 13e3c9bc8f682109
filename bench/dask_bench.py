"""Dask side of bench/noop.sh and bench/sumtree.sh, on a LocalCluster of
WORKERS worker processes with THREADS threads each. Prints the seconds from
the first submission to the last result (the cluster is started and a task
run before the clock starts).

    python dask_bench.py noop N WORKERS THREADS      # N independent no-op tasks
    python dask_bench.py sumtree LEAVES WORKERS THREADS
        # a binary sum tree: LEAVES tasks inc(i), then pairwise add up to one
        # root, the same graph as bench/sumtree.sh gives taskfarm
"""
import operator
import sys
import time

from distributed import Client, LocalCluster


def noop(_):
    return None


def inc(x):
    return x + 1


def sum_tree(leaves):
    dsk = {f"l{i}": (inc, i) for i in range(leaves)}
    level = [f"l{i}" for i in range(leaves)]
    depth = 0
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level), 2):
            k = f"s{depth}_{j // 2}"
            dsk[k] = (operator.add, level[j], level[j + 1]) if j + 1 < len(level) else (operator.add, level[j], 0)
            nxt.append(k)
        level = nxt
        depth += 1
    return dsk, level[0]


def main():
    what, n, workers, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        client.submit(noop, -1).result()  # warm up
        if what == "noop":
            t0 = time.perf_counter()
            client.gather(client.map(noop, range(n), pure=False))
        else:
            dsk, root = sum_tree(n)
            t0 = time.perf_counter()
            total = client.get(dsk, root)
            assert total == n * (n + 1) // 2, total
        print(f"{time.perf_counter() - t0:.4f}")


if __name__ == "__main__":
    main()
