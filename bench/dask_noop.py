"""Dask side of bench/noop.sh: N noop tasks on a LocalCluster with one worker
process of 2 threads; prints the seconds from first submit to last result."""
import sys
import time

from distributed import Client, LocalCluster


def noop(_):
    return None


def main():
    n = int(sys.argv[1])
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        client.submit(noop, -1).result()  # warm up
        t0 = time.perf_counter()
        futures = client.map(noop, range(n), pure=False)
        client.gather(futures)
        print(f"{time.perf_counter() - t0:.4f}")


if __name__ == "__main__":
    main()
