"""`sftflow gc`: prune the row memos that no committed artifact references.

A stage with a row memo records the memo's fingerprint in its artifact's stats
(`memo_fingerprint`). Artifacts are never deleted (history is immutable), so a memo folder some
artifact names is kept: re-running that recipe reuses it. A folder no artifact names was written
by runs that never committed (killed, failed) or by a fingerprint whose every artifact was
removed by hand: nothing can reuse it except a run that would recompute it anyway, so it goes.
Temporary `.tmp-` files (a write cut short) go too.

Run under the warehouse lock (`tasks/core/locks.py`), so no run is adding to a memo meanwhile.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sftflow.tasks.core.artifacts import MANIFEST, TMP_PREFIX as ARTIFACT_TMP_PREFIX
from sftflow.tasks.core.row_memo import MEMO_DIR, TMP_PREFIX

FINGERPRINT_STAT = "memo_fingerprint"


@dataclass
class Pruned:
    """What `prune_memos` removed (or would remove, on a dry run), and what it kept."""

    folders: list[Path] = field(default_factory=list)
    temporary_files: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    bytes_freed: int = 0


def referenced_fingerprints(artifacts_dir: Path) -> dict[str, set[str]]:
    """stage -> the memo fingerprints its committed artifacts name (in their manifests' stats)."""
    found: dict[str, set[str]] = {}
    for manifest in sorted(artifacts_dir.glob(f"*/*/{MANIFEST}")):
        if manifest.parent.name.startswith(ARTIFACT_TMP_PREFIX):
            continue
        stats = json.loads(manifest.read_text(encoding="utf-8")).get("stats") or {}
        if stats.get(FINGERPRINT_STAT):
            found.setdefault(manifest.parent.parent.name, set()).add(stats[FINGERPRINT_STAT])
    return found


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def prune_memos(warehouse: Path, dry_run: bool = False) -> Pruned:
    """Remove the memo folders no artifact references and every temporary memo file.

    >>> import tempfile
    >>> wh = Path(tempfile.mkdtemp())
    >>> (wh / "memo" / "score" / "orphan").mkdir(parents=True)
    >>> (wh / "memo" / "score" / "orphan" / "a.parquet").write_bytes(b"1234")
    4
    >>> pruned = prune_memos(wh)
    >>> [p.name for p in pruned.folders], pruned.bytes_freed, (wh / "memo" / "score" / "orphan").exists()
    (['orphan'], 4, False)
    """
    referenced = referenced_fingerprints(warehouse / "artifacts")
    pruned = Pruned()
    for folder in sorted((warehouse / MEMO_DIR).glob("*/*")):
        if not folder.is_dir():
            continue
        if folder.name not in referenced.get(folder.parent.name, set()):
            pruned.folders.append(folder)
            pruned.bytes_freed += _size(folder)
            if not dry_run:
                shutil.rmtree(folder)
            continue
        pruned.kept.append(folder)
        for tmp in sorted(folder.glob(f"{TMP_PREFIX}*")):
            pruned.temporary_files.append(tmp)
            pruned.bytes_freed += _size(tmp)
            if not dry_run:
                tmp.unlink()
    return pruned
