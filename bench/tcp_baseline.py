"""Raw TCP over loopback: seconds to move N bytes from one socket to another
(the physical reference for bench/transfer.sh). The sender sends one buffer;
the receiver reads straight into a buffer, either allocated and touched
before the clock starts (`prealloc`: the network path alone) or allocated
inside the timed region (`fresh`: what any receiver that keeps the bytes as a
new value pays, page faults included). The copying happens in the kernel,
outside the interpreter."""
import socket
import sys
import threading
import time

n = int(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "prealloc"
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
port = srv.getsockname()[1]
buf_in = bytearray(n) if mode == "prealloc" else None
done = threading.Event()


def receive():
    conn, _ = srv.accept()
    buf = buf_in if buf_in is not None else bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = conn.recv_into(view[got:], min(n - got, 1 << 24))
        if r == 0:
            break
        got += r
    conn.close()
    done.set()


t = threading.Thread(target=receive)
t.start()
buf_out = bytearray(n)
start = time.perf_counter()
c = socket.create_connection(("127.0.0.1", port))
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.sendall(memoryview(buf_out))
done.wait()
print(f"{time.perf_counter() - start:.4f}")
c.close()
t.join()
