"""Dedup decisions on corpora with the shapes real SFT data has (issue 13, items 1-3 and 11).

Each corpus is generated here, seeded, no network:
- distinct rows under one long shared system prompt, or a tool-schema system prompt, with
  planted one-word near copies among them;
- sliding-window chains (row k+1 is row k shifted by a few words);
- planted pairs at a chosen Jaccard, for a threshold other than the default;
- Chinese instruction rows with one character changed;
and the real-world files in ../shared/data when they are present.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sftflow.tasks.core.hashing import short_hash
from sftflow.tasks.core.recipe import RecipeError, parse_recipe
from sftflow.tasks.core.recipe_data import DedupConfig
from tests.stage_helpers import records_from_rows
from sftflow.tasks.dedup import deduplicate
from sftflow.tasks.lib.minhash import band_candidate_pairs, shingle_hashes, signature_matrix
from sftflow.tasks.lib.shingles import conversation_text, shingles

CFG = DedupConfig()
# The decisions below hold for both hash families: rensa (the default: exact-Jaccard verification)
# and numpy (datasketch's values, estimate verification, decisions identical to datasketch's).
BACKENDS = ["rensa", "numpy"]
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

# A Zipf-like vocabulary: frequent words recur across distinct rows as in prose, so distinct
# rows share some shingles by chance, as real ones do.
_vocab_rng = random.Random(13)
VOCAB = sorted({"".join(_vocab_rng.choices("abcdefghijklmnopqrstuvwxyz", k=_vocab_rng.randint(2, 9)))
                for _ in range(6000)})
_weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(VOCAB))]
_cumulative = list(np.cumsum(_weights))


def prose(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choices(VOCAB, cum_weights=_cumulative, k=n_words))


def row(example_id: str, messages: list[dict], source: str = "test") -> dict:
    return {
        "example_id": example_id, "content_hash": short_hash(messages), "source": source,
        "source_format": "openai", "source_uri": "memory://test", "source_row": 0, "category": "qa",
        "origin": "synthetic", "license": "cc0", "messages": messages,
    }


def chat(system: str | None, user: str, assistant: str, tool_turns: list[dict] | None = None) -> list[dict]:
    turns = [{"role": "system", "content": system}] if system else []
    turns.append({"role": "user", "content": user})
    turns += tool_turns or []
    return turns + [{"role": "assistant", "content": assistant}]


def exact_jaccard(a: list[bytes], b: list[bytes]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb)


def compared_shingles(messages: list[dict], cfg: DedupConfig = CFG) -> list[bytes]:
    """The shingles the recipe's near-dedup compares (roles, n-gram sizes): the exact Jaccard
    of two rows is computed on these."""
    near = cfg.near
    return shingles(conversation_text(messages, near.roles), near.ngram, near.ngram_unspaced)


def near_cfg(backend: str, **near) -> DedupConfig:
    return DedupConfig.model_validate({"near": {"backend": backend, **near}})


def near_drops(out) -> dict[str, str]:
    return {d["example_id"]: d["dup_of"] for d in out.decisions.to_pylist() if d["reason"] == "near_duplicate"}


def found_pairs(drops: dict[str, str], pairs: list[tuple[str, str]]) -> int:
    """Planted pairs one of whose rows was dropped as a near duplicate of the other."""
    return sum(drops.get(a) == b or drops.get(b) == a for a, b in pairs)


def false_drops(drops: dict[str, str], pairs: list[tuple[str, str]]) -> list[str]:
    partner = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    return [d for d, of in drops.items() if partner.get(d) != of]


def one_word_changed(rng: random.Random, text: str, marker: str) -> str:
    words = text.split()
    words[rng.randrange(len(words))] = marker
    return " ".join(words)


# ------------------------------------------------ (a) shared system prompt and tool schema --
def tool_schema(rng: random.Random, n_functions: int = 6) -> str:
    functions = [{
        "name": f"{rng.choice(VOCAB)}_{rng.choice(VOCAB)}",
        "description": prose(rng, 14),
        "parameters": {"type": "object", "properties": {
            rng.choice(VOCAB): {"type": "string", "description": prose(rng, 8)} for _ in range(3)}},
    } for _ in range(n_functions)]
    return "You have access to the following functions:\n" + json.dumps(functions, indent=2)


def shared_prompt_corpus(seed: int = 11, n_distinct: int = 400, n_copies: int = 60):
    """(rows, planted pairs): distinct rows under one of two long shared system prompts (a
    ~300-word chat prompt, a ~250-word tool schema whose rows also call a tool), questions of
    6-25 words and answers of 3-200 words; `n_copies` of the rows with answers of 80+ words get
    a copy with one answer word changed."""
    rng = random.Random(seed)
    chat_prompt, schema = prose(rng, 300), tool_schema(rng)
    rows, pairs = [], []
    for k in range(n_distinct):
        question = prose(rng, rng.randint(6, 25))
        answer = prose(rng, rng.randint(3, 200) if k >= n_copies else rng.randint(80, 200))
        if k % 2:
            call = {"role": "assistant", "content": json.dumps({"name": "lookup", "arguments": {"q": prose(rng, 3)}})}
            result = {"role": "tool", "content": json.dumps({"result": prose(rng, rng.randint(2, 30))})}
            messages = chat(schema, question, answer, [call, result])
        else:
            messages = chat(chat_prompt, question, answer)
        example_id = f"{rng.getrandbits(48):012x}"  # ids in no particular order
        rows.append(row(example_id, messages))
        if k < n_copies:
            copy = [dict(t) for t in messages]
            copy[-1]["content"] = one_word_changed(rng, answer, f"changed{k}")
            copy_id = f"{rng.getrandbits(48):012x}"
            rows.append(row(copy_id, copy))
            pairs.append((example_id, copy_id))
    return rows, pairs


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shared_system_prompt_does_not_make_distinct_rows_duplicates(backend):
    rows, pairs = shared_prompt_corpus()
    by_id = {r["example_id"]: r for r in rows}
    truths = [exact_jaccard(compared_shingles(by_id[a]["messages"]), compared_shingles(by_id[b]["messages"]))
              for a, b in pairs]
    assert min(truths) >= 0.85  # true near copies: one word in 80+ words
    out = deduplicate(records_from_rows(rows), near_cfg(backend))
    drops = near_drops(out)
    wrong = false_drops(drops, pairs)
    n_distinct = len(rows) - len(pairs)
    assert len(wrong) <= 0.01 * n_distinct, f"{len(wrong)} distinct rows dropped as near duplicates"
    assert found_pairs(drops, pairs) >= 0.9 * len(pairs)
    assert out.stats["near_skipped_few_shingles"] <= 0.02 * len(rows)  # only the shortest Q+A rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_roles_all_compares_the_whole_conversation(backend):
    # the old comparison, still available: the shared prompt now dominates the short rows and
    # makes distinct rows near duplicates (fewer than with connected components: no chains)
    rows, pairs = shared_prompt_corpus(n_distinct=80, n_copies=0)
    whole = near_cfg(backend, roles="all")
    assert len(false_drops(near_drops(deduplicate(records_from_rows(rows), whole)), pairs)) >= 3
    assert near_drops(deduplicate(records_from_rows(rows), near_cfg(backend))) == {}


# ---------------------------------------------------------------------- (b) no chains --
def chain_corpus(seed: int = 5, n_chains: int = 4, length: int = 40, window: int = 100, step: int = 3) -> list[dict]:
    """Sliding-window chains: row k of a chain is words [k*step, k*step + window) of one long
    text, so neighbours have Jaccard ~0.94 and rows 10 apart share nothing but a few words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_chains):
        words = prose(rng, window + step * length).split()
        for k in range(length):
            text = " ".join(words[k * step : k * step + window])
            rows.append(row(f"{rng.getrandbits(48):012x}", chat(None, "Continue the text.", text)))
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_b_every_near_drop_reaches_the_threshold_with_its_survivor(backend):
    rows = chain_corpus()
    by_id = {r["example_id"]: r for r in rows}
    out = deduplicate(records_from_rows(rows), near_cfg(backend))
    drops = near_drops(out)
    assert len(drops) >= len(rows) // 3  # the chains are redundant: plenty is dropped
    kept = set(out.records.column("example_id").to_pylist())
    worst = min(exact_jaccard(compared_shingles(by_id[d]["messages"]), compared_shingles(by_id[r]["messages"]))
                for d, r in drops.items())
    # the estimate may err by chance; exact verification may not
    assert worst >= CFG.near.threshold - (0 if backend == "rensa" else 0.1), \
        f"a row was dropped at exact Jaccard {worst:.2f} to its survivor"
    assert set(drops.values()) <= kept  # dup_of is always a kept representative
    for detail, score in zip(out.decisions.column("detail").to_pylist(), out.decisions.column("score").to_pylist()):
        if detail and "jaccard_to_representative" in detail:
            assert json.loads(detail)["jaccard_to_representative"] == score >= CFG.near.threshold


@pytest.mark.parametrize("backend", BACKENDS)
def test_b_survivors_do_not_depend_on_input_order(backend):
    rows = chain_corpus(n_chains=2)
    reference = deduplicate(records_from_rows(rows), near_cfg(backend))
    for seed in range(3):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        assert deduplicate(records_from_rows(shuffled), near_cfg(backend)).decisions.equals(reference.decisions)


# ----------------------------------------------------------------------- survivor rule --
def near_pair(seed: int) -> tuple[str, str]:
    """(text, the text with one word changed and one sentence of 8 words added)."""
    rng = random.Random(seed)
    text = prose(rng, 120)
    return text, one_word_changed(rng, text, "changed") + " " + prose(rng, 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_longest_response_survives_then_the_smallest_id(backend):
    short, longer = near_pair(1)
    rows = [row("a", chat(None, "Q?", short)), row("b", chat(None, "Q?", longer))]
    out = deduplicate(records_from_rows(rows), near_cfg(backend))
    assert near_drops(out) == {"a": "b"}
    by_id = deduplicate(records_from_rows(rows), DedupConfig.model_validate(
        {"prefer": "example_id", "near": {"backend": backend}}))
    assert near_drops(by_id) == {"b": "a"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_priority_wins_over_length_for_exact_and_near_groups(backend):
    short, longer = near_pair(2)
    rows = [
        row("a", chat(None, "Q?", longer), source="web"),
        row("b", chat(None, "Q?", short), source="web"),
        row("c", chat(None, "Q?", short), source="curated"),  # exact twin of b, from the preferred source
    ]
    out = deduplicate(records_from_rows(rows), DedupConfig.model_validate(
        {"source_priority": ["curated"], "near": {"backend": backend}}))
    decisions = {d["example_id"]: d for d in out.decisions.to_pylist()}
    assert (decisions["b"]["reason"], decisions["b"]["dup_of"]) == ("exact_duplicate", "c")
    assert (decisions["a"]["reason"], decisions["a"]["dup_of"]) == ("near_duplicate", "c")
    assert decisions["c"]["kept"]
    # without the priority, the longer web row survives and the twins point at it
    plain = {d["example_id"]: d for d in deduplicate(records_from_rows(rows), near_cfg(backend)).decisions.to_pylist()}
    assert plain["a"]["kept"]
    assert (plain["b"]["reason"], plain["b"]["dup_of"]) == ("near_duplicate", "a")
    assert (plain["c"]["reason"], plain["c"]["dup_of"]) == ("exact_duplicate", "a")
    assert json.loads(plain["c"]["detail"])["exact_of"] == "b"


def test_source_priority_names_each_source_once():
    with pytest.raises(ValueError, match="more than once"):
        DedupConfig(source_priority=["a", "a"])


# ------------------------------------------------------------ (c) bands follow the threshold --
def graded_pairs(seed: int, n_pairs: int, low: float, high: float, threshold_cfg: DedupConfig):
    """Pairs of 150-word rows whose exact compared-shingle Jaccard lies in [low, high): the
    variant gets one word substituted at a time until it falls below `high`."""
    rng = random.Random(seed)
    rows, pairs = [], []
    while len(pairs) < n_pairs:
        words = prose(rng, 150).split()
        base = chat(None, "Q?", " ".join(words))
        variant = list(words)
        while True:
            variant[rng.randrange(len(variant))] = f"edit{rng.getrandbits(32)}"
            messages = chat(None, "Q?", " ".join(variant))
            jaccard = exact_jaccard(compared_shingles(base, threshold_cfg), compared_shingles(messages, threshold_cfg))
            if jaccard < high:
                break
        if jaccard >= low:
            a, b = f"p{len(pairs):03d}a", f"p{len(pairs):03d}b"
            rows += [row(a, base), row(b, messages)]
            pairs.append((a, b))
    return rows, pairs


@pytest.mark.parametrize("backend", BACKENDS)
def test_c_threshold_06_with_derived_bands_finds_pairs_at_06(backend):
    cfg = near_cfg(backend, threshold=0.6)
    assert cfg.near.lsh_params == (22, 4) and cfg.near.expected_recall >= 0.95
    rows, pairs = graded_pairs(21, 120, 0.60, 0.64, cfg)
    grams = [compared_shingles(r["messages"], cfg) for r in rows]
    signatures = signature_matrix([shingle_hashes(g) for g in grams], cfg.near.num_perm, cfg.near.seed)
    candidates = {tuple(p) for p in band_candidate_pairs(signatures, *cfg.near.lsh_params).tolist()}
    # LSH recall on pairs at the threshold: the ceiling of what verification can then confirm
    assert sum((2 * k, 2 * k + 1) in candidates for k in range(len(pairs))) >= 0.9 * len(pairs)
    # pairs clearly above the threshold are dropped
    above, above_pairs = graded_pairs(22, 60, 0.68, 0.74, cfg)
    out = deduplicate(records_from_rows(above), cfg)
    assert found_pairs(near_drops(out), above_pairs) >= 0.9 * len(above_pairs)
    assert (out.stats["bands"], out.stats["rows"]) == (22, 4)
    assert out.stats["expected_recall_at_threshold"] == round(cfg.near.expected_recall, 4)


def test_c_explicit_bands_far_from_the_threshold_are_refused():
    with pytest.raises(RecipeError, match=r"dedup\.near.*bands = 16 and dedup\.near\.rows = 8.*24%"):
        parse_recipe({"name": "x", "sources": [{"name": "a", "path": "a.json", "format": "alpaca"}],
                      "dedup": {"near": {"threshold": 0.6, "bands": 16, "rows": 8}}})
    with pytest.raises(ValueError, match="both `bands` and `rows`"):
        DedupConfig.model_validate({"near": {"bands": 16}})
    # explicit bands that suit the threshold are the recipe's to choose
    explicit = DedupConfig.model_validate({"near": {"bands": 16, "rows": 8}})
    assert explicit.near.lsh_params == (16, 8) and explicit.near.expected_recall == pytest.approx(0.947, abs=1e-3)


# --------------------------------------------------------------------- (d) Chinese rows --
ZH_WORDS = """我们 你们 他们 这个 那个 什么 怎么 为什么 因为 所以 但是 如果 可以 应该 需要 已经 还是 或者
非常 比较 问题 方法 系统 数据 信息 技术 发展 经济 社会 文化 教育 学生 老师 学校 公司 市场 产品 服务 客户
用户 时间 地方 世界 国家 城市 政府 人民 历史 科学 研究 分析 结果 影响 作用 环境 健康 身体 生活 工作 学习
计算机 人工智能 机器 模型 算法 网络 程序 软件 硬件 语言 文章 句子 词语 翻译 回答 描述 解释 总结 列出 提供
帮助 使用 选择 考虑 创建 设计 写作 阅读 理解 讨论 评价 建议 推荐 计划 目标 原因 优点 缺点 重要 主要 基本
简单 复杂 有效 不同 相同 特别 一般 快速 缓慢 安全 危险 水 火 山 河 树 花 鸟 鱼 猫 狗 天 地 人 心 手 眼 书
茶 饭 车 路 门 家 国 钱 春天 夏天 秋天 冬天 早上 晚上 中国 北京 上海 朋友 家庭 父母 孩子 医生 医院 音乐
电影 运动 旅行 食物 水果 蔬菜 咖啡 天气 季节 颜色 能源 气候 变化 污染 保护 资源 植物 动物 海洋 太阳 月亮
空气 温度 能量 速度 距离 一个 两个 几个 许多 每个 所有 部分 其他 以下 之间 之后 之前 同时 然后 最后 首先
其次 另外 是 的 了 在 有 和 与 对 把 被 让 给 从 到 向 也 都 就 还 又 很 更 最 不 没有 会 能 要 想 说 做 看""".split()
ZH_ASKS = ["请描述", "请解释", "请列出", "请总结", "写一篇关于", "比较一下", "分析", "为什么说"]


def zh_text(rng: random.Random, n_chars: int) -> str:
    text = ""
    while len(text) < n_chars:
        text += "".join(rng.choice(ZH_WORDS) for _ in range(rng.randint(4, 10))) + rng.choice("，。；")
    return text[: n_chars - 1] + "。"


def chinese_corpus(seed: int = 8, n_distinct: int = 300, n_copies: int = 60):
    """(rows, pairs): Chinese instruction rows (an ask of 8-30 characters, an answer of 40-300),
    the first `n_copies` copied with one answer character changed."""
    rng = random.Random(seed)
    rows, pairs = [], []
    for k in range(n_distinct):
        instruction = rng.choice(ZH_ASKS) + zh_text(rng, rng.randint(6, 24))
        answer = zh_text(rng, rng.randint(40, 300))
        example_id = f"{rng.getrandbits(48):012x}"
        rows.append(row(example_id, chat(None, instruction, answer)))
        if k < n_copies:
            at = rng.randrange(len(answer) - 1)  # never the closing 。
            changed = answer[:at] + rng.choice("甲乙丙丁戊己庚辛壬癸") + answer[at + 1 :]
            copy_id = f"{rng.getrandbits(48):012x}"
            rows.append(row(copy_id, chat(None, instruction, changed)))
            pairs.append((example_id, copy_id))
    return rows, pairs


@pytest.mark.parametrize("backend", BACKENDS)
def test_d_chinese_near_copies_with_one_character_changed_are_found(backend):
    rows, pairs = chinese_corpus()
    rows.append(row("short-zh", chat(None, "你好", "你好！")))  # truly a few characters: 4 units
    out = deduplicate(records_from_rows(rows), near_cfg(backend))
    drops = near_drops(out)
    assert found_pairs(drops, pairs) >= 0.9 * len(pairs)
    assert len(false_drops(drops, pairs)) <= 0.01 * (len(rows) - len(pairs))
    skipped = [d["example_id"] for d in out.decisions.to_pylist()
               if d["detail"] and "near_skipped_n_shingles" in json.loads(d["detail"])]
    assert skipped == ["short-zh"]


# ---------------------------------------------------------- (e) real-world shared files --
def shared_records(name: str, fmt: str) -> pa.Table:
    from sftflow.tasks.core.recipe import SourceConfig
    from sftflow.tasks.core.recipe_data import NormalizeConfig
    from tests.stage_helpers import read_source
    from sftflow.tasks.normalize import normalize_records

    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (real-world files live in ../shared/data)")
    ingested = read_source(SourceConfig(name=name.split(".")[0], format=fmt, path=str(path)), path)
    return normalize_records(ingested.records, NormalizeConfig()).records


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, fmt", [("glaive_toolcall_en_demo.json", "sharegpt"), ("alpaca_en_demo.json", "alpaca")])
def test_e_shared_files_drops_reach_the_threshold(name, fmt, backend):
    records = shared_records(name, fmt)
    out = deduplicate(records, near_cfg(backend))
    assert out.decisions.num_rows == records.num_rows  # one decision per row
    messages = dict(zip(records.column("example_id").to_pylist(), records.column("messages").to_pylist()))
    for dropped, survivor in near_drops(out).items():
        jaccard = exact_jaccard(compared_shingles(messages[dropped]), compared_shingles(messages[survivor]))
        assert jaccard >= CFG.near.threshold - (0 if backend == "rensa" else 0.1)
    print(f"{name}: {out.stats}")


# ------------------------------------------------------- numpy and datasketch agree --
def test_backends_decide_alike_on_chains_and_chinese_rows():
    rows = chain_corpus(n_chains=2) + chinese_corpus(n_distinct=40, n_copies=10)[0] + shared_prompt_corpus(40, 20, 10)[0]
    reference = DedupConfig.model_validate({"near": {"backend": "datasketch"}})
    ours, theirs = deduplicate(records_from_rows(rows), near_cfg("numpy")), deduplicate(records_from_rows(rows), reference)
    assert ours.stats["near_duplicates"] > 30
    assert ours.decisions.equals(theirs.decisions) and ours.stats == theirs.stats
