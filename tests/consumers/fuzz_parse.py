"""Coverage-guided fuzzing of `consumers.parse.parse_line` with atheris (optional tool).

    .venv/bin/pip install atheris          # not a project dependency
    .venv/bin/python tests/consumers/fuzz_parse.py -atheris_runs=2000000 [-max_len=70000] [DIR]

Any libFuzzer option works. Without a corpus DIR it starts from the seed lines below (written
to a temporary directory). A crash is any exception, or a result that breaks the parser's
promises: a `Hit` whose texts cannot be encoded as UTF-8, a rejection reason outside the closed
set, or the fast path disagreeing with the careful one. Without atheris installed it runs the
same check over 200,000 random mutations of the seeds (`--mutations N` chooses that mode and
count even with atheris), so the script is always usable. The hypothesis properties in
test_parse_properties.py are what the normal test suite runs.

pytest does not collect this file (its name does not start with `test_`).
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

SEEDS = (
    b'83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /presentations/ HTTP/1.1" 200 203023 '
    b'"http://semicomplete.com/" "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_1)"',
    b'127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326',
    b'2001:db8::1 - - [10/Oct/2000:13:55:36 +0530] "PROPFIND /a\\"b HTTP/1.1" 207 - "" '
    b'"UA \\"quoted\\" \\\\" "198.51.100.1, 10.0.0.2"',
    b'::ffff:10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "-" 408 - "-" "-"',
    b'{"time":"2023-02-22T03:38:18.123Z","remoteIP":"203.0.113.9","request":"/cafe/menu.php",'
    b'"query":"?x=1","method":"GET","status":"200","userAgent":"Mozilla \\x41","referer":"-"}',
    b'{"time": "2023-02-22 03:38:18", "remoteIP": "192.0.2.1", "request": "/cafe", "status": 200,'
    b' "useragent": "caf\xe9", "city": "Seattle", "lat": "47.6"}',
    b"PHP Warning:  Undefined variable $cart in /var/www/html/cafe/processOrder.php on line 42",
    b"\x16\x03\x01\xc0\xff\xfe",
)


def check(data: bytes) -> None:
    """Raise if `parse_line` breaks a promise on `data`."""
    from consumers import parse
    from consumers.models import REJECTION_REASONS, Hit

    result = parse.parse_line(data)
    if isinstance(result, Hit):
        for value in (result.client_ip, result.method, result.path, result.user_agent):
            if value is not None:
                value.encode("utf-8")
        if not 100 <= result.status <= 599:
            raise AssertionError(f"status {result.status}")
    elif result.reason not in REJECTION_REASONS:
        raise AssertionError(f"unknown reason {result.reason!r}")
    try:
        text = data.strip(b" \t\r\n").decode()
    except UnicodeDecodeError:
        return
    if len(data) <= parse.MAX_LINE_BYTES and not text.startswith("{"):
        quick = parse._parse_combined_quickly(text)
        if quick is not None and quick != parse._parse_access_line(text):
            raise AssertionError(f"fast path disagrees on {text!r}")


def mutate(line: bytes, rng: random.Random) -> bytes:
    data = bytearray(line)
    for _ in range(rng.randint(1, 6)):
        position = rng.randint(0, len(data))
        byte = rng.choice([*b' "\\[]-?{}:/\x00\r\n\xff\xc3\x80', rng.randrange(256)])
        action = rng.random()
        if action < 0.4:
            data.insert(position, byte)
        elif action < 0.7 and position < len(data):
            data[position] = byte
        elif position < len(data):
            del data[position : position + rng.randint(1, 8)]
    return bytes(data)


def run_without_atheris(mutations: int) -> None:
    rng = random.Random(1)
    for i in range(mutations):
        check(mutate(SEEDS[i % len(SEEDS)], rng))
    print(f"{mutations} mutated lines checked (install atheris for coverage-guided fuzzing)")


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if "--mutations" in sys.argv:
        run_without_atheris(int(sys.argv[sys.argv.index("--mutations") + 1]))
        return
    try:
        import atheris
    except ImportError:
        run_without_atheris(200_000)
        return
    with atheris.instrument_imports():
        import consumers.models
        import consumers.parse  # noqa: F401
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="fuzz-parse-"))
        for number, seed in enumerate(SEEDS):
            (corpus / f"seed-{number}").write_bytes(seed)
        argv.append(str(corpus))
    atheris.Setup(argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
