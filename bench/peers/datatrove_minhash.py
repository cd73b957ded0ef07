"""datatrove's MinHash dedup pipeline on a JSONL file, run by bench/dedup.py in its own venv.

datatrove pins its own dependency versions, so it is installed in a separate virtual
environment (build/bench-venvs/datatrove) and run as a subprocess. Its four documented steps
run with one worker each, as sftflow's stage runs in one process: signatures, buckets (one
task per bucket, as datatrove requires), clustering, filtering. Same shingle size, bands and
rows as the sftflow recipe defaults, and SHA-1 with 32-bit signatures as sftflow's (datatrove's
default xxhash path passes str to the xxhash release PyPI serves today, which refuses it).
Words are split with the same rule as sftflow's shingles (lowercase \\w+ runs) instead of
datatrove's spaCy default, which would only make the peer slower.

Prints one JSON object: {"seconds": pipeline wall time, "removed": [ids removed]}.

    python bench/peers/datatrove_minhash.py INPUT.jsonl WORKDIR BANDS ROWS NGRAM
"""

import json
import re
import sys
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig
from datatrove.utils.word_tokenizers import WordTokenizer

WORD = re.compile(r"\w+")


class Words(WordTokenizer):
    def word_tokenize(self, text):
        return WORD.findall(text.lower())

    def sent_tokenize(self, text):
        return [text]

    def span_tokenize(self, text):
        return [(0, len(text))]


def main() -> None:
    source, workdir, bands, rows, ngram = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:6])
    config = MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows,
                           norm_config=TextNormConfig(lowercase=True),
                           hash_config=HashConfig(precision=32, hash_fc="sha1"))
    folder = str(Path(source).parent)
    pattern = Path(source).name

    def reader():
        return JsonlReader(folder, glob_pattern=pattern, id_key="id", text_key="text")

    steps = [
        ([reader(), MinhashDedupSignature(str(workdir / "signatures"), config=config, language=Words())], 1),
        ([MinhashDedupBuckets(str(workdir / "signatures"), str(workdir / "buckets"), config=config)], bands),
        ([MinhashDedupCluster(str(workdir / "buckets"), str(workdir / "remove_ids"), config=config)], 1),
        ([reader(), MinhashDedupFilter(str(workdir / "remove_ids"),
                                       exclusion_writer=JsonlWriter(str(workdir / "removed"), compression=None)),
          JsonlWriter(str(workdir / "kept"), compression=None)], 1),
    ]
    started = time.perf_counter()
    for index, (pipeline, tasks) in enumerate(steps):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1,
                              logging_dir=str(workdir / f"logs-{index}")).run()
    seconds = time.perf_counter() - started
    removed = [json.loads(line)["id"] for path in sorted((workdir / "removed").glob("*.jsonl"))
               for line in path.read_text().splitlines() if line]
    print(json.dumps({"seconds": seconds, "removed": removed}))


if __name__ == "__main__":
    main()
