"""payload.manifest: the JSON round trip and every check of ``from_json``."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nix_prefix.payload import hashes, nix32, signing
from nix_prefix.payload.archive import Cut
from nix_prefix.payload.manifest import Chunk, Manifest, ManifestError, PathEntry


def base(name: str) -> str:
    """A well-formed store path base name (32 nix32 characters, a dash, the name)."""
    return nix32.encode(hashlib.sha1(name.encode()).digest()) + "-" + name


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


NIX = base("nix-2.8.0")
LIBC = base("glibc-2.35")
HELLO = base("hello-2.12")
DRV = base("hello-2.12.drv")


def sample() -> Manifest:
    paths = [
        PathEntry(LIBC, hashes.format_sha256(sha("libc")), 3000, [LIBC], "", 0),
        PathEntry(NIX, hashes.format_sha256(sha("nix")), 2000, [LIBC, NIX], "", 0),
        PathEntry(HELLO, hashes.format_sha256(sha("hello")), 120, [LIBC], DRV, 1),
    ]
    chunks = [Chunk("payload/0000.tar.xz", 1500, sha("c0").hex(), 5000, [LIBC, NIX]),
              Chunk("payload/0001.tar.xz", 100, sha("c1").hex(), 120, [HELLO])]
    return Manifest("/tmp/nix/store", "x86_64-linux", "xz", paths, chunks, [NIX, HELLO],
                    NIX + "/bin/nix-store", payload_size=1600,
                    payload_sha256=sha("payload").hex(), longest_path=97,
                    preamble_sha256=sha("preamble").hex(), tool_version="0.1.0")


def state(m: Manifest) -> dict[str, Any]:
    """Everything a Manifest holds, for comparisons."""
    return {
        "store_dir": m.store_dir, "system": m.system, "compression": m.compression,
        "paths": [p.to_dict() for p in m.paths], "chunks": [c.to_dict() for c in m.chunks],
        "roots": m.roots, "nix_store": m.nix_store, "payload_size": m.payload_size,
        "payload_sha256": m.payload_sha256, "longest_path": m.longest_path,
        "preamble_sha256": m.preamble_sha256, "tool_version": m.tool_version,
    }


def doc() -> dict[str, Any]:
    return json.loads(sample().to_json())


def encode(d: Any) -> bytes:
    return json.dumps(d).encode()


# -- round trip and determinism -------------------------------------------------------------------

def test_round_trip() -> None:
    original = sample()
    data = original.to_json()
    parsed = Manifest.from_json(data)
    assert state(parsed) == state(original)
    assert parsed.to_json() == data
    assert parsed.total_nar_size == 5120
    assert parsed.prefix == "/tmp/nix"
    assert parsed.store_path(NIX) == "/tmp/nix/store/" + NIX
    assert [p.name for p in parsed.paths if 0 in parsed.chunk_spans()[p.name]] == [LIBC, NIX]
    assert [p.name for p in parsed.paths if 1 in parsed.chunk_spans()[p.name]] == [HELLO]


def test_round_trip_without_nix_store() -> None:
    m = sample()
    m.nix_store = None
    parsed = Manifest.from_json(m.to_json())
    assert parsed.nix_store is None
    assert parsed.to_json() == m.to_json()


def test_deterministic_bytes() -> None:
    one, two = sample().to_json(), sample().to_json()
    assert one == two
    assert one.endswith(b"\n") and not one.endswith(b"\n\n")
    assert one.decode("ascii")  # ensure_ascii: pure ASCII
    d = json.loads(one)
    assert list(d) == sorted(d)
    assert json.dumps(d, sort_keys=True, indent=1).encode() + b"\n" == one
    assert d["format"] == "nix-prefix-manifest" and d["version"] == 4
    assert d["totalNarSize"] == 5120


def test_path_order_is_kept() -> None:
    m = sample()
    m.paths.reverse()  # the chunks hold them in the same order
    m.chunks[0].paths, m.chunks[1].paths = [HELLO, NIX], [LIBC]
    for p, chunk in zip(m.paths, (0, 0, 1), strict=True):
        p.chunk = chunk
    parsed = Manifest.from_json(m.to_json())
    assert [p.name for p in parsed.paths] == [HELLO, NIX, LIBC]
    assert parsed.to_json() == m.to_json()


@pytest.mark.parametrize("form", ["hex", "sha256:hex", "nix32", "SRI"])
def test_nar_hash_is_normalised(form: str) -> None:
    digest = sha("libc")
    text = {"hex": digest.hex(), "sha256:hex": "sha256:" + digest.hex(),
            "nix32": nix32.encode(digest),
            "SRI": "sha256-" + base64.b64encode(digest).decode()}[form]
    d = doc()
    d["paths"][0]["narHash"] = text
    parsed = Manifest.from_json(encode(d))
    assert parsed.paths[0].nar_hash == hashes.format_sha256(digest)


def test_non_ascii_tool_version_round_trips() -> None:
    m = sample()
    m.tool_version = "0.1.0+é"
    data = m.to_json()
    assert data.decode("ascii")
    assert Manifest.from_json(data).tool_version == "0.1.0+é"


def test_derivations_round_trip_and_default() -> None:
    m = sample()
    m.paths.append(PathEntry(DRV, hashes.format_sha256(sha("drv")), 0, [LIBC], "", 1))
    m.chunks[1].paths.append(DRV)
    m.derivations = True
    parsed = Manifest.from_json(m.to_json())
    assert parsed.derivations is True and parsed.to_json() == m.to_json()
    # Written before the field existed: no derivations.
    d = doc()
    assert d["derivations"] is False
    del d["derivations"]
    assert Manifest.from_json(encode(d)).derivations is False


@pytest.mark.parametrize("value", [1, 0, "true", None, []])
def test_rejects_derivations_of_the_wrong_type(value: Any) -> None:
    d = doc()
    d["derivations"] = value
    reject(encode(d), "derivations must be true or false")


def test_rejects_derivations_without_a_drv() -> None:
    d = doc()
    d["derivations"] = True
    reject(encode(d), "no .drv")


SIG = "k1:" + base64.b64encode(bytes(range(64))).decode()


def test_signatures_and_code_hash_round_trip_and_default() -> None:
    m = sample()
    m.paths[0].sigs = [SIG]
    m.code_sha256 = sha("code").hex()
    parsed = Manifest.from_json(m.to_json())
    assert parsed.paths[0].sigs == [SIG] and parsed.paths[1].sigs == []
    assert parsed.code_sha256 == sha("code").hex() and parsed.to_json() == m.to_json()
    # Written before the fields existed: no signatures, no code hash.
    d = json.loads(m.to_json())
    del d["codeSha256"]
    for p in d["paths"]:
        del p["sigs"]
    old = Manifest.from_json(encode(d))
    assert old.code_sha256 == "" and all(p.sigs == [] for p in old.paths)


def test_fingerprint_and_moving_drops_signatures() -> None:
    m = sample()
    m.paths[1].sigs = [SIG]
    refs = ",".join(sorted("/tmp/nix/store/" + n for n in (LIBC, NIX)))
    assert m.fingerprint(m.paths[1]) == f"1;/tmp/nix/store/{NIX};{m.paths[1].nar_hash};2000;{refs}"
    moved = m.retargeted("/tmp/nux/store", "/tmp/nux/store")
    assert all(p.sigs == [] for p in moved.paths) and m.paths[1].sigs == [SIG]
    # A path whose bytes changed (a new NAR hash) loses its signature; the others keep theirs.
    m.paths[0].sigs = [SIG]
    rehashed = m.with_nar_info({NIX: (hashes.format_sha256(sha("other")), 2000),
                                LIBC: (m.paths[0].nar_hash, m.paths[0].nar_size)})
    assert rehashed.paths[1].sigs == [] and rehashed.paths[0].sigs == [SIG]


@pytest.mark.parametrize(("value", "match"), [
    ("k1:short", "sig"), (["nocolon"], "NAME:BASE64"), ([7], "must be text"),
    (["k1:" + base64.b64encode(bytes(63)).decode()], "63 bytes"),
])
def test_rejects_malformed_path_signatures(value: Any, match: str) -> None:
    d = doc()
    d["paths"][0]["sigs"] = value
    reject(encode(d), match)


@pytest.mark.parametrize("value", ["abc", "0" * 63, 5, "G" * 64])
def test_rejects_a_malformed_code_hash(value: Any) -> None:
    d = doc()
    d["codeSha256"] = value
    reject(encode(d), "codeSha256")


# -- rejections ------------------------------------------------------------------------------------

def reject(data: bytes, match: str | None = None) -> ManifestError:
    with pytest.raises(ManifestError, match=match) as caught:
        Manifest.from_json(data)
    return caught.value


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"nix", b'{"format": }'])
def test_rejects_non_json(data: bytes) -> None:
    reject(data, "not valid JSON")


@pytest.mark.parametrize("value", ["nix-prefix-manifesto", "", None, 1, ["nix-prefix-manifest"]])
def test_rejects_wrong_format(value: Any) -> None:
    d = doc()
    d["format"] = value
    reject(encode(d), "not a nix-prefix manifest")


@pytest.mark.parametrize("data", [b"[]", b"1", b'"nix-prefix-manifest"', b"null", b"{}"])
def test_rejects_non_manifest_json(data: bytes) -> None:
    reject(data, "not a nix-prefix manifest")


@pytest.mark.parametrize("value", [0, 1, 2, 5, -1, "3", None, [3]])
def test_rejects_wrong_version(value: Any) -> None:
    d = doc()
    d["version"] = value
    reject(encode(d), "version")


def test_missing_version() -> None:
    d = doc()
    del d["version"]
    reject(encode(d), "version")


Mutation = Callable[[dict[str, Any]], None]


def _set(*keys: Any, value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        target = d
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return mutate


def _fix_total(d: dict[str, Any]) -> None:
    d["totalNarSize"] = sum(p["narSize"] for p in d["paths"] if isinstance(p["narSize"], int))


def _then_fix_total(mutation: Mutation) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        mutation(d)
        _fix_total(d)
    return mutate


def _duplicate_path(d: dict[str, Any]) -> None:
    d["paths"].append(copy.deepcopy(d["paths"][0]))
    _fix_total(d)


def _duplicate_chunk_file(d: dict[str, Any]) -> None:
    d["chunks"][1]["file"] = d["chunks"][0]["file"]


def _del(*keys: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        target = d
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]
    return mutate


OUTSIDE = base("not-in-closure")

REJECTIONS: dict[str, tuple[Mutation, str]] = {
    "reference outside the closure":
        (_set("paths", 2, "references", value=[LIBC, OUTSIDE]), "not in the closure"),
    "duplicate path": (_duplicate_path, "listed twice"),
    "chunk index out of range": (_set("paths", 2, "chunk", value=2), "does not exist"),
    "chunk index far out of range": (_set("paths", 0, "chunk", value=10**9), "does not exist"),
    "negative chunk index": (_set("paths", 0, "chunk", value=-1), "non-negative integer"),
    "root not in closure": (_set("roots", value=[NIX, OUTSIDE]), "root"),
    "negative narSize": (_then_fix_total(_set("paths", 0, "narSize", value=-1)),
                         "non-negative integer"),
    "negative chunk size": (_set("chunks", 0, "size", value=-1), "non-negative integer"),
    "negative chunk tarSize": (_set("chunks", 0, "tarSize", value=-5), "non-negative integer"),
    "negative payload size": (_set("payload", "size", value=-1), "non-negative integer"),
    "negative longestPath": (_set("longestPath", value=-1), "non-negative integer"),
    "bool narSize": (_set("paths", 0, "narSize", value=True), "non-negative integer"),
    "bool chunk index": (_set("paths", 0, "chunk", value=False), "non-negative integer"),
    "bool chunk size": (_set("chunks", 0, "size", value=True), "non-negative integer"),
    "bool payload size": (_set("payload", "size", value=True), "non-negative integer"),
    "bool longestPath": (_set("longestPath", value=True), "non-negative integer"),
    "float narSize": (_set("paths", 0, "narSize", value=3000.0), "non-negative integer"),
    "string narSize": (_set("paths", 0, "narSize", value="3000"), "non-negative integer"),
    "nixStore in an unknown path": (_set("nixStore", value=OUTSIDE + "/bin/nix-store"),
                                    "nixStore"),
    "nixStore escaping with ..": (_set("nixStore", value=NIX + "/../" + LIBC + "/bin/x"),
                                  "nixStore"),
    "nixStore absolute": (_set("nixStore", value="/bin/nix-store"), "nixStore"),
    "nixStore empty": (_set("nixStore", value=""), "nixStore"),
    "nixStore not a string": (_set("nixStore", value=1), "nixStore"),
    "totalNarSize mismatch": (_set("totalNarSize", value=5121), "totalNarSize"),
    "totalNarSize zero": (_set("totalNarSize", value=0), "totalNarSize"),
    "payload size mismatch": (_set("payload", "size", value=1601), "payload size"),
    "bad chunk file name": (_set("chunks", 0, "file", value="payload/0.tar.xz"), "chunk 0"),
    "chunk file outside payload/": (_set("chunks", 0, "file", value="../0000.tar.xz"),
                                    "chunk 0"),
    "chunk file absolute": (_set("chunks", 1, "file", value="/payload/0001.tar.xz"),
                            "chunk 1"),
    "chunk file with subdir": (_set("chunks", 1, "file", value="payload/x/0001.tar.xz"),
                               "chunk 1"),
    "chunk file unknown extension": (_set("chunks", 1, "file", value="payload/0001.tar.gz"),
                                     "chunk 1"),
    "chunk sha256 not hex": (_set("chunks", 0, "sha256", value="z" * 64), "chunk 0"),
    "chunk sha256 upper case": (_set("chunks", 0, "sha256", value=sha("c0").hex().upper()),
                                "chunk 0"),
    "chunk sha256 short": (_set("chunks", 0, "sha256", value=sha("c0").hex()[:-1]), "chunk 0"),
    "duplicate chunk file": (_duplicate_chunk_file, "share one file name"),
    "bad narHash": (_set("paths", 1, "narHash", value="sha256:xyz"), NIX),
    "md5 narHash": (_set("paths", 1, "narHash", value="md5:" + "0" * 32), NIX),
    "bad store path name": (_set("paths", 0, "name", value="glibc"), "store path name"),
    "store path name with slash": (_set("paths", 0, "name", value=LIBC + "/x"),
                                   "not allow"),
    "bad deriver": (_set("paths", 2, "deriver", value="hello.drv"), "store path name"),
    "bad reference name": (_set("paths", 0, "references", value=["../etc"]), "store path"),
    "relative storeDir": (_set("storeDir", value="tmp/nix/store"), "storeDir"),
    "storeDir with ..": (_set("storeDir", value="/tmp/../nix/store"), "storeDir"),
    "storeDir with space": (_set("storeDir", value="/tmp/my nix/store"), "storeDir"),
    "storeDir with trailing slash": (_set("storeDir", value="/tmp/nix/store/"), "storeDir"),
    "bad system": (_set("system", value="x86_64 linux"), "system"),
    "missing paths": (_del("paths"), "missing"),
    "missing payload sha256": (_del("payload", "sha256"), "missing"),
    "paths not a list": (_set("paths", value=None), "wrong type"),
    "path entry not an object": (_set("paths", 0, value=[LIBC]), "wrong type"),
    "chunks not a list": (_set("chunks", value=7), "wrong type"),
    "payload not an object": (_set("payload", value=[1600]), "wrong type"),
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_rejects(case: str) -> None:
    mutate, match = REJECTIONS[case]
    d = doc()
    mutate(d)
    reject(encode(d), match)


def _leaves(d: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _leaves(v, prefix + (i,))
    yield prefix


@pytest.mark.parametrize("value", [None, True, -1, 1.5, "x", "", [], {}, [None], {"a": 1}])
def test_any_wrong_value_gives_manifest_error(value: Any) -> None:
    """Replace each field, container or leaf, in turn: only ManifestError may come out."""
    for where in _leaves(doc()):
        if not where:
            continue
        d = doc()
        _set(*where, value=value)(d)
        try:
            Manifest.from_json(encode(d))
        except ManifestError:
            pass


# -- strictness the manifest reader once lacked ----------------------------------------------

@pytest.mark.parametrize("value", [True, 2.0])
def test_rejects_version_of_the_wrong_type(value: Any) -> None:
    d = doc()
    d["version"] = value
    reject(encode(d), "version")


def test_rejects_float_total_nar_size() -> None:
    d = doc()
    d["totalNarSize"] = 5120.0
    reject(encode(d), "totalNarSize")


@pytest.mark.parametrize("case", ["path name", "deriver", "storeDir", "chunk file",
                                  "chunk sha256", "system"])
def test_rejects_trailing_newline(case: str) -> None:
    d = doc()
    if case == "path name":
        d["paths"][1]["name"] = NIX + "\n"
        d["nixStore"] = NIX + "\n/bin/nix-store"
        d["roots"] = [NIX + "\n", HELLO]
        d["paths"][1]["references"] = [LIBC, NIX + "\n"]
    elif case == "deriver":
        d["paths"][2]["deriver"] = DRV + "\n"
    elif case == "storeDir":
        d["storeDir"] = "/tmp/nix/store\n"
    elif case == "chunk file":
        d["chunks"][0]["file"] += "\n"
    elif case == "chunk sha256":
        d["chunks"][0]["sha256"] += "\n"
    elif case == "system":
        d["system"] += "\n"
    reject(encode(d))


@pytest.mark.parametrize("rest", ["/bin/nix-store\n", "/bin/nix\0store"])
def test_rejects_bad_nix_store_rest(rest: str) -> None:
    d = doc()
    d["nixStore"] = NIX + rest
    reject(encode(d), "nixStore")


# -- chunks cut inside store paths (format 2) ------------------------------------------------------

def split_doc() -> dict[str, Any]:
    """NIX cut between two of its entries, HELLO (a single file) inside its contents."""
    m = sample()
    m.chunks = [Chunk("payload/0000.tar.xz", 500, sha("c0").hex(), 4000, [LIBC, NIX]),
                Chunk("payload/0001.tar.xz", 600, sha("c1").hex(), 1060, [NIX, HELLO],
                      Cut(NIX, "bin/nix-store", "regular")),
                Chunk("payload/0002.tar.xz", 500, sha("c2").hex(), 60, [HELLO],
                      Cut(HELLO, "", "regular", 60, 120))]
    m.paths[2].chunk = 1
    return json.loads(m.to_json())


def test_split_layout_round_trips() -> None:
    parsed = Manifest.from_json(encode(split_doc()))
    assert parsed.chunk_spans() == {LIBC: [0], NIX: [0, 1], HELLO: [1, 2]}
    assert sample().chunk_spans() == {LIBC: [0], NIX: [0], HELLO: [1]}
    assert parsed.end_of(0) == Cut(NIX, "bin/nix-store", "regular")
    assert parsed.end_of(1) == Cut(HELLO, "", "regular", 60, 120) and parsed.end_of(2) is None
    assert [p.name for p in parsed.paths if 1 in parsed.chunk_spans()[p.name]] == [NIX, HELLO]
    assert parsed.to_json() == encode_manifest(split_doc())


def encode_manifest(d: dict[str, Any]) -> bytes:
    return (json.dumps(d, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode()


def _drop_chunk(index: int) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        gone = d["chunks"].pop(index)
        d["payload"]["size"] -= gone["size"]
    return mutate


def _swap_chunks(d: dict[str, Any]) -> None:
    c = d["chunks"]
    c[1], c[2] = c[2], c[1]
    c[1]["file"], c[2]["file"] = c[2]["file"], c[1]["file"]


def _start(index: int, **fields: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        d["chunks"][index]["start"].update(fields)
    return mutate


SPLIT_REJECTIONS: dict[str, tuple[Mutation, str]] = {
    "a piece missing": (_drop_chunk(1), "not where chunk 0 ends"),
    "pieces out of order": (_swap_chunks, "not where chunk"),
    "overlapping pieces": (_set("chunks", 2, "paths", value=[NIX, HELLO]), "not where chunk"),
    "a path held twice": (_set("chunks", 2, "start", value=None), "once each, in order"),
    "a start in the first chunk": (_set("chunks", 0, "start",
                                        value={"path": LIBC, "entry": "", "type": "directory"}),
                                   "chunk 0 has a bad start"),
    "a start of another path": (_start(1, path=LIBC), "not where chunk 0 ends"),
    "a cut at the end of a file": (_start(2, offset=120), "inside a file at byte 120 of 120"),
    "a cut inside a directory": (_start(1, type="directory", offset=1, size=2),
                                 "inside a file"),
    "an offset without a size": (_start(2, size=None), "non-negative integer"),
    "a cut after a whole path": (_set("chunks", 2, "start",
                                      value={"path": HELLO, "entry": "", "type": "symlink"}),
                                 "after the whole of"),
    "a cut entry with ..": (_start(1, entry="bin/../../x"), "bad entry"),
    "a cut of unknown type": (_start(1, type="fifo"), "bad entry"),
    "a path said to begin where it does not": (_set("paths", 2, "chunk", value=2),
                                               "does not begin it"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_REJECTIONS))
def test_rejects_chunks_that_do_not_join_up(case: str) -> None:
    mutation, match = SPLIT_REJECTIONS[case]
    d = split_doc()
    mutation(d)
    reject(encode(d), match)


def test_manifest_embedded_store_dir_must_be_a_padding_of_the_store_dir() -> None:
    m = Manifest("/a/b/store", "x86_64-linux", "xz", [], [], [],
                 embedded_store_dir="/a/b////store")
    assert Manifest.from_json(m.to_json()).max_store_dir_length == len("/a/b////store")
    bad = Manifest("/a/b/store", "x86_64-linux", "xz", [], [], [],
                   embedded_store_dir="/a/c////store")
    with pytest.raises(ManifestError, match="embeddedStoreDir"):
        Manifest.from_json(bad.to_json())


# -- records read back by from_dict, each checking its own fields ----------------------------

REC_A = "a" * 32 + "-a"
REC_B = "b" * 32 + "-b"
REC_DRV = "d" * 32 + "-b.drv"
REC_NAR_HASH = "sha256:" + "1" * 52
REC_SIG = str(signing.Signature("k1", bytes(64)))
REC_SHA = "0" * 64


def entry_state(e: PathEntry) -> tuple:
    return (e.name, e.nar_hash, e.nar_size, e.references, e.deriver, e.chunk, e.sigs)


def chunk_state(c: Chunk) -> tuple:
    return (c.file, c.size, c.sha256, c.tar_size, c.paths, c.start)


def through_json(d: dict) -> Any:
    return json.loads(json.dumps(d))


@pytest.mark.parametrize("entry", [
    PathEntry(REC_A, REC_NAR_HASH, 120, []),
    PathEntry(REC_B, REC_NAR_HASH, 7, [REC_A, REC_B], REC_DRV, 3, [REC_SIG]),
])
def test_a_path_entry_round_trips(entry: PathEntry) -> None:
    back = PathEntry.from_dict(through_json(entry.to_dict()))
    assert entry_state(back) == entry_state(entry)


@pytest.mark.parametrize(("index", "chunk"), [
    (0, Chunk("payload/0000.tar.xz", 10, REC_SHA, 20, [REC_A])),
    (1, Chunk("payload/0001.tar.zst", 10, REC_SHA, 20, [REC_A, REC_B],
              Cut(REC_A, "", "directory"))),
    (2, Chunk("payload/0002.tar", 10, REC_SHA, 20, [REC_B], Cut(REC_B, "bin/x", "regular", 5, 9))),
    (3, Chunk("payload/0003.tar.xz", 10, REC_SHA, 20, [REC_B], Cut(REC_B, "lib/l", "symlink"))),
])
def test_a_chunk_round_trips(index: int, chunk: Chunk) -> None:
    back = Chunk.from_dict(through_json(chunk.to_dict()), index)
    assert chunk_state(back) == chunk_state(chunk)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("name", "a", "store path name"),
    ("narHash", "sha256:xyz", REC_A + ": "),
    ("narSize", -1, "narSize must be a non-negative integer"),
    ("chunk", True, "chunk must be a non-negative integer"),
    ("deriver", "x.drv", "store path name"),
    ("references", ["../etc"], "store path"),
    ("sigs", "k1:x", REC_A + ": sigs must be a list"),
    ("sigs", ["k1:x"], REC_A + ": "),
])
def test_a_path_entry_checks_its_own_fields(field: str, value: Any, says: str) -> None:
    d = PathEntry(REC_A, REC_NAR_HASH, 120, []).to_dict()
    d[field] = value
    with pytest.raises(ManifestError, match=says):
        PathEntry.from_dict(d)


@pytest.mark.parametrize(("index", "field", "value", "says"), [
    (0, "file", "payload/0.tar.xz", "chunk 0 has a bad file name or sha256"),
    (4, "sha256", "Z" * 64, "chunk 4 has a bad file name or sha256"),
    (0, "start", {"path": REC_A, "entry": "", "type": "directory"}, "chunk 0 has a bad start"),
    (2, "start", {"path": REC_A, "entry": "x", "type": "fifo"}, "chunk 2 starts at a bad entry"),
    (2, "start", {"path": REC_A, "entry": "x", "type": "regular", "offset": 9, "size": 9},
     "chunk 2 starts inside a file at byte 9 of 9"),
    (1, "size", -2, "chunks.size must be a non-negative integer"),
])
def test_a_chunk_checks_its_own_fields(index: int, field: str, value: Any, says: str) -> None:
    d = Chunk("payload/0000.tar.xz", 10, REC_SHA, 20, [REC_A]).to_dict()
    d[field] = value
    with pytest.raises(ManifestError, match=says):
        Chunk.from_dict(d, index)


def test_records_that_are_each_fine_can_still_not_fit_together() -> None:
    """from_dict takes each record alone; from_json then refuses what does not fit."""
    chunks = [Chunk("payload/0000.tar.xz", 10, REC_SHA, 20, [REC_A, REC_B])]
    paths = [PathEntry(REC_A, REC_NAR_HASH, 1, [REC_B]), PathEntry(REC_B, REC_NAR_HASH, 1, [REC_A])]
    manifest = Manifest("/x/store", "x86_64-linux", "xz", paths, chunks, [REC_A], payload_size=10)
    doc = json.loads(manifest.to_json())
    for d in doc["paths"]:
        PathEntry.from_dict(d)
    with pytest.raises(ManifestError, match="references of 2 store paths form a cycle"):
        Manifest.from_json(manifest.to_json())
    doc["paths"][1]["chunk"] = 1
    with pytest.raises(ManifestError, match=f"{REC_B} is in chunk 1, which does not exist"):
        Manifest.from_json(json.dumps(doc).encode())
