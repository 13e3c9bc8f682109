# taskfarm's Python executor: one persistent process per worker thread that
# runs Python tasks. Started by the worker (runtime/src/worker/python.rs) as
# `python -c <bootstrap> taskfarm-executor`; the bootstrap reads this file from
# stdin (u64 length + text) and runs it, so it needs no taskfarm package,
# only cloudpickle.
#
# Pipe protocol, both directions: a u8 kind, a u64 little-endian body length,
# the body. The worker may write several tasks at once (a batch that fits in
# the pipe); results are written in task order and flushed when no complete
# task is left to read (or 1 MiB of results is waiting), so a batch of short
# tasks costs one wake-up each way, not one per task.
#   worker -> executor  b"T": one task (see `run_task`)
#                       b"S": a worker plugin to run now (answered by O or E):
#                             a pickled callable, or an object with setup()
#                       b"Z": u8 1 if large results go through shared
#                             memory (the answer to H), else 0; u64 bytes
#                             of spare files, and of kept mappings, to hold
#                       b"F": u32 descriptor numbers (here) of result
#                             files the worker dropped: kept for reuse
#                       b"D": drop the files kept for reuse (worker idle)
#   executor -> worker  b"H": ready (body: Python version, then a zero byte
#                             and the descriptor number of a one-byte memory
#                             file the worker tries to open), or
#                       b"X": cannot start (body: the reason, UTF-8)
#                       b"O": a result: u8 value tag (J, B, P) + the value
#                       b"M": a large result in a memory file: u8 tag P,
#                             u32 descriptor number here, u64 length; the
#                             file stays open here until the worker gives
#                             it back (F), then it is reused or closed
#                       b"U": pairs of u32 descriptor number (in the
#                             worker) and u32 count: that many finished
#                             tasks' dependencies of tag M no longer mapped
#                             here (sent as tasks end, whenever their
#                             mappings are gone)
#
# A dependency with tag M is a value in the worker's shared memory: u32
# descriptor number in the worker, u64 length; mapped copy-on-write here
# (runtime/src/shm.rs). The worker keeps it (its file is not reused) until
# U says no finished task's mapping of it is alive: an array a task kept
# (in a global, say) never sees its bytes change.
#
# A "P" value is a pickle, or (when it holds large buffers, e.g. numpy
# arrays) the framed pickle-5 form: OOB_MAGIC, u32 buffer count, u64 pickle
# length, u64 per buffer length, then the pickle and each buffer, every part
# starting at a multiple of 64 bytes. Buffers are then neither copied into
# the pickle nor out of it: arrays are views of the received bytes. The
# worker places each dependency's bytes 64-byte aligned in a task message.
# (taskfarm/_serialize.py reads and writes the same form on the client.)
#                       b"E": an error: u32 text length, traceback text,
#                             then the pickled exception (may be empty)
import os
import sys


def _main():
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    # What tasks print goes to the worker's stderr, never into the protocol;
    # tasks read nothing from the worker's stdin.
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # `python -c` puts the working directory first on sys.path: move it last,
    # so modules there are importable but never shadow installed packages
    # (a `joblib.py` next to the worker must not replace joblib).
    if sys.path and sys.path[0] == "":
        sys.path.append(sys.path.pop(0))
    wf = os.fdopen(proto_out, "wb", buffering=1 << 20)
    import struct

    header = struct.Struct("<cQ")

    def send(kind, *parts, flush=False):
        wf.write(header.pack(kind, sum(len(p) for p in parts)))
        for p in parts:
            wf.write(p)
        if flush:
            wf.flush()

    try:
        import io
        import json
        import mmap
        import pickle
        import threading
        import time
        import traceback
        import importlib

        import cloudpickle
    except ImportError as e:
        send(b"X", f"{e}; this Python ({sys.executable}) needs cloudpickle: pip install cloudpickle, "
                   f"or point the worker at another interpreter with --python or TASKFARM_PYTHON".encode(), flush=True)
        return

    # Die with the worker: a worker killed with SIGKILL cannot stop us, so
    # notice that our parent changed and leave.
    parent = os.getppid()

    def watchdog():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watchdog, daemon=True, name="taskfarm-watchdog").start()

    for name in filter(None, os.environ.get("TASKFARM_PRELOAD", "").split(",")):
        try:
            module = importlib.import_module(name)
            setup = getattr(module, "taskfarm_setup", None)
            if callable(setup):
                setup()
        except BaseException:
            send(b"X", f"--preload {name} failed:\n{traceback.format_exc()}".encode(), flush=True)
            return

    plain_scalars = (str, bool, float, type(None))

    def is_plain(v, budget):
        """Whether v is exactly representable as JSON (and back): None, bool,
        str, 64-bit int, finite float, and lists / str-keyed dicts of them."""
        stack = [v]
        while stack:
            budget[0] -= 1
            if budget[0] < 0:
                return False
            x = stack.pop()
            t = type(x)
            if t is int:
                if not -(1 << 63) <= x < (1 << 63):
                    return False
            elif t is float:
                if x != x or x in (float("inf"), float("-inf")):
                    return False
            elif t in plain_scalars:
                pass
            elif t is list:
                stack.extend(x)
            elif t is dict:
                for k, item in x.items():
                    if type(k) is not str:
                        return False
                    stack.append(item)
            else:
                return False
        return True

    OOB_MAGIC = b"\x00tfoob5"  # no pickle starts with a zero byte

    def pad64(n):
        return -n % 64

    def pickle_with(v, **kw):
        try:
            return pickle.dumps(v, protocol=5, **kw)
        except Exception:
            return cloudpickle.dumps(v, protocol=5, **kw)

    def dumps(v):
        """A value's "P" body, as parts: the framed form when it has buffers."""
        bufs = []
        data = pickle_with(v, buffer_callback=bufs.append)
        if not bufs:
            return [data]
        try:
            raws = [b.raw() for b in bufs]
        except BufferError:  # a non-contiguous buffer: all in-band after all
            return [pickle_with(v)]
        head = OOB_MAGIC + struct.pack(f"<IQ{len(raws)}Q", len(raws), len(data), *(r.nbytes for r in raws))
        parts = [head, bytes(pad64(len(head))), data, bytes(pad64(len(data)))]
        for r in raws:
            parts += [r, bytes(pad64(r.nbytes))]
        return parts

    def loads(body):
        """A "P" body back (buffers of the framed form are views of body)."""
        mv = memoryview(body)
        if mv[:len(OOB_MAGIC)] != OOB_MAGIC:
            return pickle.loads(mv)
        at = len(OOB_MAGIC)
        n, plen = struct.unpack_from("<IQ", mv, at)
        lens = struct.unpack_from(f"<{n}Q", mv, at + 12)
        at += 12 + 8 * n
        at += pad64(at)
        data = mv[at:at + plen]
        at += plen + pad64(plen)
        bufs = []
        for ln in lens:
            bufs.append(mv[at:at + ln])
            at += ln + pad64(ln)
        return pickle.loads(data, buffers=bufs)

    def encode(v):
        if v is None:
            return b"J", [b"null"]
        t = type(v)
        if t is bytes:
            return b"B", [v]
        if (t in plain_scalars or t is int or t is list or t is dict) and is_plain(v, [10000]):
            return b"J", [json.dumps(v, separators=(",", ":")).encode()]
        return b"P", dumps(v)

    # Pins (see U above): the finished tasks' pins not given back yet
    # (their files still mapped here).
    released = {}
    # Mappings handed to tasks ([worker fd, inode, mmap]), and the ones no
    # task uses any more whose pages were never written, by inode: a later
    # value in the same (recycled) file is read through pages already
    # mapped, as Ray's workers read its store (a new mapping costs about as
    # much again as reading 50 MB through it).
    in_use = []
    views = {}

    def mapped(body):
        """A worker's shared value (tag M): a private copy-on-write map of
        its memory file, so arrays unpickled from it are writable views."""
        fd, n = struct.unpack_from("<IQ", body, 0)
        f = os.open(f"/proc/{parent}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            ino = os.fstat(f).st_ino
            m = views.pop(ino, None)
            if m is not None and len(m) < n:
                m.close()
                m = None
            if m is None:
                m = mmap.mmap(f, n, access=mmap.ACCESS_COPY)
            else:
                files["mapped again"] += 1
        finally:
            os.close(f)
        in_use.append([fd, ino, m])
        # (a cached mapping may be longer than this value: its file was
        # larger once; the bytes past n are never read)
        return m if len(m) == n else memoryview(m)[:n]

    # A page of a private mapping that was written is the process's own
    # (pagemap: present and not a file page, or swapped): such a mapping is
    # not kept, it no longer shows its file.
    written_page = bytes(1 if (b & 0x80 and not b & 0x20) or b & 0x40 else 0 for b in range(256))

    def unwritten(m):
        try:
            import ctypes

            probe = ctypes.c_char.from_buffer(m)
            addr = ctypes.addressof(probe)
            del probe
            pages = (len(m) + 4095) // 4096
            with open("/proc/self/pagemap", "rb", buffering=0) as pm:
                entries = os.pread(pm.fileno(), pages * 8, addr // 4096 * 8)
        except (OSError, ValueError, TypeError, ImportError):
            return False
        return len(entries) == pages * 8 and 1 not in entries[7::8].translate(written_page)

    def sweep():
        """Mappings no task refers to any more: unpinned, and kept for
        reuse when clean (within shared["keep"] bytes), else unmapped."""
        if not in_use:
            return
        busy = []
        for entry in in_use:
            _, ino, m = entry
            if sys.getrefcount(m) > 3:  # in_use's entry, m, the argument
                busy.append(entry)
                continue
            if ino not in views and unwritten(m) and sum(map(len, views.values())) + len(m) <= shared["keep"]:
                views[ino] = m
            else:
                m.close()
        del entry, m
        in_use[:] = busy

    def task_pins(deps):
        """A task's dependencies of tag M: pinned until it ends."""
        return [struct.unpack_from("<I", body, 0)[0] for tag, body in deps if tag == b"M"]

    def give_back(pins):
        """A task ended: its pins, and earlier ones, whose files are no
        longer mapped here go back to the worker (U)."""
        sweep()
        for fd in pins:
            released[fd] = released.get(fd, 0) + 1
        mapped_now = {entry[0] for entry in in_use}
        back = [fd for fd in released if fd not in mapped_now]
        if back:
            send(b"U", b"".join(struct.pack("<II", fd, released.pop(fd)) for fd in back))

    def decode(tag, body):
        if tag == b"M":
            return loads(mapped(body))
        if tag == b"J":
            return json.loads(bytes(body))
        if tag == b"B":
            return bytes(body)
        return loads(body)

    funcs = {}

    class ArgsUnpickler(pickle.Unpickler):
        def __init__(self, data, deps):
            super().__init__(io.BytesIO(data))
            self.deps = deps
            self.done = {}

        def persistent_load(self, pid):
            if pid not in self.done:
                tag, body = self.deps[pid]
                self.done[pid] = decode(tag, body)
            return self.done[pid]

    def messages():
        """The worker's messages as (kind, body); flushes the results
        written so far whenever it must wait for more input."""
        inbuf = bytearray()
        while True:
            at, have = 0, len(inbuf)
            while have - at >= 9:
                kind, n = header.unpack_from(inbuf, at)
                if have - at - 9 < n:
                    break
                # a writable copy: arrays that are views of it are writable
                body = inbuf[at + 9:at + 9 + n]
                at += 9 + n
                yield kind, body
            del inbuf[:at]
            wf.flush()
            if len(inbuf) >= 9:
                # a message larger than what came so far: read the rest of it
                # straight into its own buffer
                kind, n = header.unpack_from(inbuf, 0)
                if n > 1 << 20:
                    # anonymous memory, its pages mapped in one go (not
                    # zero-filled as bytearray(n) would be, nor faulted in
                    # page by page: 1 GB arrives ~3x faster here)
                    body = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0))
                    filled = len(inbuf) - 9
                    body[:filled] = inbuf[9:]
                    inbuf = bytearray()
                    view = memoryview(body)
                    while filled < n:
                        got = os.readv(proto_in, [view[filled:]])
                        if got == 0:
                            return
                        filled += got
                    del view
                    yield kind, body
                    del body
                    continue
            data = os.read(proto_in, 1 << 20)
            if not data:
                return
            inbuf += data

    u32 = struct.Struct("<I")
    u64 = struct.Struct("<Q")

    def field(body, at):
        (n,) = u32.unpack_from(body, at)
        at += 4
        return body[at:at + n], at + n

    def run_task(body, pins):
        # u32+hash, u32+func (empty: cached), u32+args, u32 ndeps, then
        # per dependency u8 tag + u64 length + u8 padding length + padding
        # (so the bytes start 64-byte aligned in the body) + bytes
        mv = memoryview(body)
        fhash, at = field(mv, 0)
        func, at = field(mv, at)
        args, at = field(mv, at)
        (ndeps,) = u32.unpack_from(mv, at)
        at += 4
        deps = []
        for _ in range(ndeps):
            tag = bytes(mv[at:at + 1])
            (n,) = u64.unpack_from(mv, at + 1)
            at += 10 + mv[at + 9]
            deps.append((tag, mv[at:at + n]))
            at += n
        key = bytes(fhash)
        fn = funcs.get(key)
        if fn is None:
            fn = pickle.loads(func)
            if len(funcs) > 1000:
                funcs.clear()
            funcs[key] = fn
        pins.extend(task_pins(deps))
        if ndeps:
            a, kw = ArgsUnpickler(args, deps).load()
        else:
            a, kw = pickle.loads(args)
        return fn(*a, **kw)

    def run_plugin(plugin):
        """A worker plugin: a callable, or an object with ``setup`` (Dask's
        WorkerPlugin); one that takes an argument gets None (there is no
        Dask worker object here)."""
        import inspect

        fn = plugin.setup if hasattr(plugin, "setup") else plugin
        try:
            required = [p for p in inspect.signature(fn).parameters.values()
                        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            required = []
        return fn(None) if required else fn()

    def report_error(e):
        tb = e.__traceback__
        # Leave out this file's frames: the traceback starts in the task.
        while tb is not None and tb.tb_frame.f_code in own_code and tb.tb_next is not None:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(e), e, tb))
        try:
            blob = cloudpickle.dumps(e, protocol=5)
            pickle.loads(blob)
        except Exception:
            blob = b""
        text_bytes = text.encode("utf-8", "replace")
        send(b"E", u32.pack(len(text_bytes)), text_bytes, blob)

    SHARED_MIN = 1 << 20  # runtime/src/shm.rs: MIN_SHARED
    # keep: bytes of spare files, and of kept mappings, held (set by Z;
    # dropped when idle: D)
    shared = {"on": False, "keep": 0}
    # Result files: the ones the worker holds, and the ones it gave back
    # (F), kept for reuse: writing into pages already allocated and mapped
    # costs a third of a new file. fd -> [capacity, size, mapping or None].
    owned = {}
    spares = {}
    # counted for the tests (python/tests/test_client.py)
    files = {"new": 0, "reused": 0, "mapped again": 0}
    sys.modules["__main__"].taskfarm_result_files = files

    def drop_file(fd, entry):
        if entry[2] is not None:
            entry[2].close()
        os.close(fd)

    def reusable(size):
        """A spare file for a result of `size` bytes (at most twice that
        capacity), resized and mapped; or None."""
        fits = [fd for fd, (cap, _, _) in spares.items() if size <= cap <= 2 * size]
        if not fits:
            return None
        fd = min(fits, key=lambda f: spares[f][0])
        entry = spares.pop(fd)
        _, had, m = entry
        if had != size:
            os.ftruncate(fd, size)
        fresh = m is None or len(m) < size
        if fresh:
            if m is not None:
                m.close()
            m = entry[2] = mmap.mmap(fd, size)
        if fresh or had < size:
            try:  # MADV_POPULATE_WRITE (Linux 5.14): the pages mapped in one go
                m.madvise(23, 0, size)
            except (OSError, ValueError):
                pass
        entry[1] = size
        return fd, entry

    def send_result(tag, parts):
        """A result: in a memory file when it is a large pickle and the
        worker maps those, else through the pipe."""
        size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
        if not (shared["on"] and tag == b"P" and size >= SHARED_MIN):
            send(b"O", tag, *parts)
            return
        spare = reusable(size)
        if spare is None:
            fd = os.memfd_create("taskfarm-value", os.MFD_CLOEXEC)
            for p in parts:
                view = memoryview(p).cast("B")
                while view:
                    view = view[os.write(fd, view):]
            owned[fd] = [size, size, None]
            files["new"] += 1
        else:
            fd, entry = spare
            m, at = entry[2], 0
            for p in parts:
                view = memoryview(p).cast("B")
                m[at:at + len(view)] = view
                at += len(view)
            owned[fd] = entry
            files["reused"] += 1
        send(b"M", tag, struct.pack("<IQ", fd, size))

    def given_back(body):
        """F: the worker dropped these results: keep their files for reuse
        while they fit in shared["keep"] bytes, else close them."""
        held = sum(e[1] for e in spares.values())
        for (fd,) in struct.iter_unpack("<I", body):
            entry = owned.pop(fd, None)
            if entry is None:
                continue
            if held + entry[1] <= shared["keep"]:
                spares[fd] = entry
                held += entry[1]
            else:
                drop_file(fd, entry)

    own_code = (sys._getframe().f_code, run_task.__code__)
    probe = None
    if hasattr(os, "memfd_create"):
        probe = os.memfd_create("taskfarm-probe", os.MFD_CLOEXEC)
        os.write(probe, b"\0")
    send(b"H", sys.version.encode() + (b"" if probe is None else b"\0" + str(probe).encode()), flush=True)
    for kind, body in messages():
        pins = None
        try:
            if kind == b"T":
                pins = []
                result = run_task(body, pins)
                # the task's arguments are gone: its pins may go back
                give_back(pins)
                pins = None
                tag, parts = encode(result)
                del result
                send_result(tag, parts)
                del parts
            elif kind == b"F":
                given_back(body)
            elif kind == b"D":
                for fd in list(spares):
                    drop_file(fd, spares.pop(fd))
                for m in views.values():
                    m.close()
                views.clear()
            elif kind == b"Z":
                shared["on"] = body[:1] == b"\x01"
                if len(body) >= 9:
                    shared["keep"] = u64.unpack_from(body, 1)[0]
                if probe is not None:
                    os.close(probe)
                    probe = None
            elif kind == b"S":
                run_plugin(pickle.loads(body))
                send(b"O", b"J", b"null", flush=True)
        except BaseException as e:
            report_error(e)
        del body  # a large task's buffer is not kept until the next task
        if pins is not None:
            # a failed task: its traceback (and its arguments) are gone now
            give_back(pins)


_main()
