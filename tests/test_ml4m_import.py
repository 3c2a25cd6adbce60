"""ml-4m data brought to Tessera: `jobs.import_ml4m` lists an ml-4m-style folder in a manifest (checked, nothing
copied) and the pretrain job trains on it.

The folder is laid out as apple/ml-4m lays its data out: `save_vq_tokens.py` saves each sample's tokens as an int16
`.npy` of shape (n_crops, tokens) with the crop of each row in `crop_settings` (top, left, height, width, hflip; the
first crop a centre crop without flip), and its data configs read one WebDataset folder per modality, shards named
`shard-{00000..N}.tar` (five digits), token folders named `tok_<modality>@<resolution>` or mapped onto those names by
a `modality_name_map` (save_vq_tokens.py's own folder name is `<task>_<suffix>`, e.g. `depth_dvae_BUa_224`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from jobs.import_ml4m import main as import_main
from pipeline.data.encoding import encode_npy
from pipeline.data.inspect import verify_output
from pipeline.data.loader import TokenShardLoader
from pipeline.data.manifest import MissingManifestError, read_manifest
from pipeline.data.ml4m_import import Ml4mImportError, import_ml4m
from pipeline.data.storage import Storage
from pipeline.data.tar_io import tar_bytes
from pipeline.data.token_shards import list_token_shards, read_token_shard
from schemas.batch import ModalitySpec, ModalityTable
from schemas.common import StorageConfig
from schemas.config import load_config
from schemas.loading import LoaderConfig, MaskingConfig
from schemas.ml4m import ImportMl4mConfig

REPO = Path(__file__).resolve().parent.parent
SHARDS, PER_SHARD, CROPS, TOKENS = 4, 16, 2, 196  # 224 px at 16 px patches: 14 x 14 tokens per crop
FOLDERS = {"tok_rgb@224": 16_384, "depth_dvae_BUa_224": 8_192}  # folder -> vocabulary of its tokenizer
DEPTH_NAME = ["--folder-name", "depth_dvae_BUa_224=tok_depth@224"]


def write_ml4m_folder(root: Path, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """An ml-4m-style root: token folders, crop_settings, captions and a folder Tessera has no modality for.
    Returns folder -> key -> the token array written."""
    rng = np.random.default_rng(seed)
    written: dict[str, dict[str, np.ndarray]] = {folder: {} for folder in FOLDERS}
    for shard in range(SHARDS):
        keys = [f"{shard * PER_SHARD + i:09d}" for i in range(PER_SHARD)]
        members: dict[str, list[tuple[str, bytes]]] = {"crop_settings": [], "caption": [], "mask_valid": []}
        for key in keys:
            for folder, vocab in FOLDERS.items():
                tokens = rng.integers(0, vocab, size=(CROPS, TOKENS)).astype(np.int16)
                written[folder][key] = tokens
                members.setdefault(folder, []).append((f"{key}.npy", encode_npy(tokens)))
            crops = np.array([[16, 0, 224, 224, 0], [40, 12, 180, 200, 1]], dtype=np.int64)
            members["crop_settings"].append((f"{key}.npy", encode_npy(crops)))
            members["caption"].append((f"{key}.txt", f"a photo number {key}".encode()))
            members["mask_valid"].append((f"{key}.png", b"not read"))
        for folder, pairs in members.items():
            path = root / folder / f"shard-{shard:05d}.tar"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tar_bytes(pairs))
    return written


@pytest.fixture
def ml4m_root(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "ml4m"
    return root, write_ml4m_folder(root)


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_import_writes_only_a_manifest_that_reads_back_the_ml4m_tokens(ml4m_root, tmp_path, capsys):
    root, written = ml4m_root
    before = files_under(root)
    output = tmp_path / "tessera"
    assert import_main([str(root), "--output", str(output), *DEPTH_NAME]) == 0
    line = capsys.readouterr().out.strip()
    assert "64 samples in 4 shards" in line and "mask_valid (no modality" in line
    assert files_under(root) == before  # nothing written, renamed or copied in the source
    assert [p.name for p in output.iterdir()] == ["manifest.parquet"]
    storage = Storage(str(output), StorageConfig())
    rows = read_manifest(storage)
    assert {r.folder for r in rows} == {"tok_rgb", "tok_depth", "crop_settings", "caption"}
    for row in rows:
        # the manifest names the source's own tars and their checksums; its shard numbers come from their names
        assert row.uri == f"{root}/{Path(row.uri).parent.name}/shard-{row.shard:05d}.tar"
        assert row.sha256 == hashlib.sha256(Path(row.uri).read_bytes()).hexdigest()
        assert row.samples == PER_SHARD and row.source_units == (row.uri,)
    rgb = [r for r in rows if r.folder == "tok_rgb"]
    assert {(r.modality, r.tokenizer_id, r.longest_row, r.token_count) for r in rgb} == {
        ("rgb", "ml4m:tok_rgb@224", TOKENS, PER_SHARD * CROPS * TOKENS)}
    # Tessera's reader gives back exactly the arrays written, both crops, keys aligned across the folders
    shards = list_token_shards(storage, ["rgb", "depth"])
    assert [s.shard for s in shards] == [0, 1, 2, 3]
    for shard in shards:
        for key, arrays in read_token_shard(storage, shard):
            np.testing.assert_array_equal(arrays["rgb"], written["tok_rgb@224"][key])
            np.testing.assert_array_equal(arrays["depth"], written["depth_dvae_BUa_224"][key])


def test_import_in_place_makes_an_output_that_tessera_verifies(ml4m_root):
    root, _ = ml4m_root
    summary = import_ml4m(ImportMl4mConfig(source=str(root), folder_names={"depth_dvae_BUa_224": "tok_depth@224"}),
                          log=lambda _: None)
    assert summary["in_place"] and summary["folders"]["tok_depth"]["row_lengths"] == [TOKENS]
    storage = Storage(str(root), StorageConfig())
    assert {r.uri for r in read_manifest(storage) if r.shard == 0} == {
        "tok_rgb@224/shard-00000.tar", "depth_dvae_BUa_224/shard-00000.tar", "crop_settings/shard-00000.tar",
        "caption/shard-00000.tar"}
    assert verify_output(storage).samples == SHARDS * PER_SHARD  # the consumers' own check: checksums, alignment
    with pytest.raises(Ml4mImportError, match="is a Tessera output already"):
        import_ml4m(ImportMl4mConfig(source=str(root)), log=lambda _: None)


def rewrite_shard(path: Path, change) -> None:
    """Rewrite one tar of the source with its (name, payload) members passed through `change`."""
    import tarfile

    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    path.write_bytes(tar_bytes(change(members)))


@pytest.mark.parametrize("damage, message", [
    (lambda root: rewrite_shard(root / "tok_rgb@224/shard-00002.tar", lambda m: [m[1], m[0], *m[2:]]),
     r"shard 2 is not aligned: .* first difference at position 0 \('000000033' vs '000000032'\)"),
    (lambda root: (root / "caption/shard-00003.tar").unlink(), r"caption has no shard \[3\]"),
    (lambda root: rewrite_shard(root / "tok_rgb@224/shard-00001.tar",
                                lambda m: [(m[0][0], encode_npy(np.full((2, 196), 20_000, np.int32))), *m[1:]]),
     r"tok_rgb@224/shard-00001.tar: 000000016.npy holds token ids 20000..20000, outside rgb's vocabulary of 16384"),
    (lambda root: rewrite_shard(root / "tok_rgb@224/shard-00000.tar", lambda m: [(m[0][0], b"\x93NUMPY"), *m[1:]]),
     r"tok_rgb@224/shard-00000.tar: 000000000.npy: "),
    (lambda root: (root / "tok_rgb@448").mkdir() or (root / "tok_rgb@448/shard-00000.tar").write_bytes(b""),
     r"several folders would be the same Tessera folder: \{'tok_rgb': \['tok_rgb@224', 'tok_rgb@448'\]\}"),
])
def test_import_refuses_what_tessera_could_not_train_on(ml4m_root, tmp_path, damage, message):
    root, _ = ml4m_root
    damage(root)
    with pytest.raises(Ml4mImportError, match=message):
        import_ml4m(ImportMl4mConfig(source=str(root), output=str(tmp_path / "out")), log=lambda _: None)
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_resolution_picks_one_of_several_token_folders(ml4m_root, tmp_path):
    root, _ = ml4m_root
    (root / "tok_rgb@448").mkdir()
    (root / "tok_rgb@448/shard-00000.tar").write_bytes(b"")  # never opened: it is not the resolution asked for
    summary = import_ml4m(ImportMl4mConfig(source=str(root), output=str(tmp_path / "out"), resolution=224),
                          log=lambda _: None)
    assert summary["folders"]["tok_rgb"]["source"] == "tok_rgb@224"
    assert summary["skipped"]["tok_rgb@448"] == "resolution 448, not 224"


def test_import_from_s3_to_s3_reads_back_through_the_manifest(ml4m_root, s3_bucket):
    """On S3 the manifest names the source's objects by s3:// URI; the training reader reads them with the
    output's storage settings."""
    from conftest import S3_TEST_KEY, S3_TEST_SECRET

    root, written = ml4m_root
    bucket, overrides = s3_bucket
    endpoint = overrides[0].split("=", 1)[1]
    storage = StorageConfig(endpoint_url=endpoint, region="us-east-1", access_key_id=S3_TEST_KEY,
                            secret_access_key=S3_TEST_SECRET)
    source = Storage(f"s3://{bucket}/ml4m", storage)
    for relpath, payload in files_under(root).items():
        source.write_atomic(relpath, payload)
    assert import_main([f"s3://{bucket}/ml4m", "--output", f"s3://{bucket}/tessera", *DEPTH_NAME,
                        *[f"--set={o}" for o in overrides]]) == 0
    output = Storage(f"s3://{bucket}/tessera", storage)
    assert output.list() == ["manifest.parquet"]
    shards = list_token_shards(output, ["rgb"])
    assert shards[0].uris == (("rgb", f"s3://{bucket}/ml4m/tok_rgb@224/shard-00000.tar"),)
    key, arrays = read_token_shard(output, shards[-1])[-1]
    np.testing.assert_array_equal(arrays["rgb"], written["tok_rgb@224"][key])


def test_a_folder_without_manifest_fails_in_one_line_that_names_the_import(ml4m_root, capsys):
    root, _ = ml4m_root
    table = ModalityTable.of([ModalitySpec.from_registry("rgb", TOKENS)])
    with pytest.raises(MissingManifestError) as error:
        TokenShardLoader(str(root), table, MaskingConfig(), LoaderConfig())
    assert "\n" not in str(error.value) and f"python -m jobs.import_ml4m {root} --output DST" in str(error.value)
    from jobs.pretrain import main as pretrain_main

    with pytest.raises(SystemExit) as exit_code:  # run_job's one-line exit, before any Ray instance starts
        from jobs.cli import run_job
        run_job(lambda: pretrain_main(["--data", str(root)]))
    assert exit_code.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_round_trip_imported_ml4m_tokens_train(ray_session, ml4m_root, tmp_path):
    """ml-4m's tokens, imported without a copy, are trained on by the pretrain job (tiny size, two workers)."""
    from pipeline.train.metrics import read_metrics
    from pipeline.train.trainer import run_pretrain
    from schemas.pretrain import PretrainConfig

    root, _ = ml4m_root
    output = tmp_path / "tessera"
    assert import_main([str(root), "--output", str(output), *DEPTH_NAME]) == 0
    config = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        f"data={output}", f"storage_path={tmp_path / 'runs'}", "modalities=[rgb,depth]", "steps=6", "log_every=2",
        "checkpoint_every=6", "workers=2", "loader.batch_size=4", "masking.input_tokens=32",
        "masking.target_tokens=32", "validation.fraction=0.2"])
    summary = run_pretrain(config)
    log = read_metrics(summary["metrics_file"])
    assert [m["step"] for m in log] == [2, 4, 6]
    assert {"loss_rgb", "loss_depth", "val_loss"} <= set(log[-1]) and np.isfinite(log[-1]["loss"])
    assert [(e["name"], e["tokens"]) for e in summary["table"]] == [("rgb", TOKENS), ("depth", TOKENS)]
    assert [p.name for p in output.iterdir()] == ["manifest.parquet"]
