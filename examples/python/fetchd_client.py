#!/usr/bin/env python3
"""A fetchd client in Python: the server-streaming gRPC client of the
tutorials, talking to the Rust server.

The stubs are generated from the same proto/ the server is built from, with
grpcio-tools, each time this runs (into a temporary folder that is removed
at exit), so they can never drift from the .proto. Needs grpcio,
grpcio-tools and grpcio-reflection (examples/python/requirements.txt).

    python fetchd_client.py --server 127.0.0.1:50051 get logs/app.log -o app.log
    python fetchd_client.py --server 127.0.0.1:50051 get big.bin --compress gzip
    python fetchd_client.py --server 127.0.0.1:50051 tail logs/app.log -n 5 --follow
    python fetchd_client.py --server 127.0.0.1:50051 services

get: streams Read into OUT.part while hashing with hashlib, compares the
sha256 with the one in the ReadTrailer, and only then renames OUT.part onto
OUT; prints one JSON line {"path","dest","bytes","sha256"}. Exit 1 on a
mismatch or an RPC error (the gRPC status is printed on stderr).
tail: prints the last N lines, then (with --follow) what is appended, as the
bytes arrive; --exit-after-lines K stops after K lines in all.
services: lists the services the server offers by reflection (no .proto
needed), and the methods of fetchd.v1.Fetchd from the descriptors it sends.
"""
import argparse
import atexit
import hashlib
import importlib.resources
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent.parent.parent / "proto"
PROTO_FILE = "fetchd/v1/fetchd.proto"


def generate_stubs():
    """Runs grpcio-tools' protoc over proto/ into a temporary folder and
    imports the result: (messages module, service stubs module)."""
    out = tempfile.mkdtemp(prefix="fetchd-py-")
    atexit.register(shutil.rmtree, out, True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        PROTO_FILE,
    ])
    if status != 0:
        sys.exit(f"fetchd_client: protoc failed on {PROTO_DIR / PROTO_FILE}")
    sys.path.insert(0, out)
    from fetchd.v1 import fetchd_pb2, fetchd_pb2_grpc  # noqa: E402 (generated above)
    return fetchd_pb2, fetchd_pb2_grpc


COMPRESSION = {
    "none": grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
}


def fail(message):
    print(f"fetchd_client: {message}", file=sys.stderr)
    sys.exit(1)


def rpc_error(path, err):
    fail(f"{path}: {err.code().name}: {err.details()}")


def cmd_get(channel, pb, pb_grpc, args):
    """Downloads one file, verified against the server's sha256."""
    stub = pb_grpc.FetchdStub(channel)
    dest = Path(args.output or Path(args.path).name)
    part = dest.with_name(dest.name + ".part")
    hasher = hashlib.sha256()
    received = 0
    header = trailer = None
    # A client asks fetchd for compressed file data by compressing its
    # request: the server answers in the encoding the request used.
    call = stub.Read(pb.ReadRequest(path=args.path), timeout=args.timeout,
                     compression=COMPRESSION[args.compress])
    try:
        with open(part, "wb") as out:
            for message in call:
                kind = message.WhichOneof("kind")
                if kind == "header":
                    header = message.header
                elif kind == "data":
                    out.write(message.data)
                    hasher.update(message.data)
                    received += len(message.data)
                elif kind == "trailer":
                    trailer = message.trailer
    except grpc.RpcError as err:
        part.unlink(missing_ok=True)
        rpc_error(args.path, err)
    if header is None or trailer is None:
        part.unlink(missing_ok=True)
        fail(f"{args.path}: the stream ended without its header or trailer")
    if received != header.length:
        part.unlink(missing_ok=True)
        fail(f"{args.path}: got {received} bytes, the header announced {header.length}")
    if hasher.digest() != trailer.sha256:
        part.unlink(missing_ok=True)
        fail(f"{args.path}: checksum mismatch: hashlib {hasher.hexdigest()}, "
             f"server {trailer.sha256.hex()}")
    os.replace(part, dest)
    print(json.dumps({"path": args.path, "dest": str(dest), "bytes": received,
                      "sha256": hasher.hexdigest()}), flush=True)


def cmd_tail(channel, pb, pb_grpc, args):
    """Prints the last lines of a file, then follows it."""
    stub = pb_grpc.FetchdStub(channel)
    request = pb.TailRequest(path=args.path, last_lines=args.lines, follow=args.follow)
    lines = 0
    out = sys.stdout.buffer
    call = stub.Tail(request, timeout=args.timeout, compression=COMPRESSION[args.compress])
    try:
        for message in call:
            if message.WhichOneof("kind") == "event":
                kind = pb.TailEventKind.Name(message.event.kind)
                if kind not in ("TAIL_EVENT_KIND_OPENED", "TAIL_EVENT_KIND_HEARTBEAT"):
                    print(f"fetchd_client: {args.path}: {kind}", file=sys.stderr, flush=True)
                continue
            data = message.data.data
            if args.exit_after_lines is not None:
                # Print up to and including the line that reaches the count.
                for piece in data.splitlines(keepends=True):
                    out.write(piece)
                    if piece.endswith(b"\n"):
                        lines += 1
                        if lines >= args.exit_after_lines:
                            out.flush()
                            call.cancel()
                            return
            else:
                out.write(data)
            out.flush()
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.CANCELLED:
            return
        rpc_error(args.path, err)


def cmd_services(channel, _pb, _pb_grpc, args):
    """Lists services and fetchd's methods by server reflection only."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    from google.protobuf.descriptor_pool import DescriptorPool

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        responses = stub.ServerReflectionInfo(iter([request]), timeout=args.timeout)
        names = [s.name for r in responses for s in r.list_services_response.service]
    except grpc.RpcError as err:
        rpc_error("reflection", err)
    for name in sorted(names):
        print(name)
    # The descriptors come from the server, not from proto/.
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName("fetchd.v1.Fetchd")
    for method in service.methods:
        stream = "stream " if method.server_streaming else ""
        print(f"  fetchd.v1.Fetchd/{method.name}({method.input_type.name}) "
              f"returns ({stream}{method.output_type.name})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("FETCHD_SERVER", "127.0.0.1:50051"),
                        help="HOST:PORT of a fetchd server (env FETCHD_SERVER)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="deadline of each call in seconds (default: none)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    get = verbs.add_parser("get", help="download a file and verify its sha256")
    get.add_argument("path")
    get.add_argument("-o", "--output", help="where to write (default ./BASENAME)")
    get.add_argument("--compress", choices=sorted(COMPRESSION), default="none")
    tail = verbs.add_parser("tail", help="print the last lines, then follow")
    tail.add_argument("path")
    tail.add_argument("-n", "--lines", type=int, default=10)
    tail.add_argument("--follow", action="store_true")
    tail.add_argument("--exit-after-lines", type=int, default=None)
    tail.add_argument("--compress", choices=sorted(COMPRESSION), default="none")
    verbs.add_parser("services", help="list services by server reflection")
    args = parser.parse_args()

    server = args.server.removeprefix("http://")
    pb, pb_grpc = generate_stubs()
    with grpc.insecure_channel(server) as channel:
        {"get": cmd_get, "tail": cmd_tail, "services": cmd_services}[args.verb](
            channel, pb, pb_grpc, args)


if __name__ == "__main__":
    main()
