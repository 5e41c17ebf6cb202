"""DataLoaderLite on real shards written to tmp_path: token order, ranks, resumption, shuffling, bad input."""
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydoc_data.topics import topics

from dataloaderlite import DataError, DataLoaderLite
from fineweb import LOCAL_DIR, ShardWriter, shard_name
from gpt2_tokenizer import EOT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, T = 2, 4
# train shard lengths that are no multiple of any step span used below (8, 16, 32 tokens)
LENGTHS = [100, 75, 131]


def write_shards(folder, lengths=LENGTHS, split="train", indices=None):
    """Shards of distinct tokens (shard i holds i*1000, i*1000+1, ...), so every token names its place; indices: the
    file names' numbers, 0, 1, 2, ... unless given."""
    folder.mkdir(exist_ok=True)
    shards = []
    for i, n in enumerate(lengths):
        tokens = (i * 1000 + np.arange(n)).astype(np.uint16)
        np.save(folder / f"edufineweb_{split}_{i if indices is None else indices[i]:06d}.npy", tokens)
        shards.append(tokens)
    return shards


def loader(folder, B=B, T=T, rank=0, world=1, **kwargs):
    return DataLoaderLite(B, T, rank, world, "train", data_root=str(folder), verbose=False, **kwargs)


def stream(dl, steps):
    return [dl.next_batch() for _ in range(steps)]


def where_each_batch_comes_from(dl, steps):
    """(epoch, visit in the epoch, shard file) of each of the next `steps` batches."""
    out = []
    for _ in range(steps):
        out.append((dl.epoch, dl.shard, dl.current_shard))
        dl.next_batch()
    return out


def lecture_order(shards, B, T, steps):
    """The lecture's single-process order, written out: every whole B*T+1 window of each shard in turn."""
    out = []
    while len(out) < steps:
        for tokens in shards:
            out += [torch.from_numpy(tokens[s:s + B * T + 1].astype(np.int64))
                    for s in range(0, len(tokens) - B * T, B * T)]
    return out[:steps]


def same(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(batches_a, batches_b))


# -----------------------------------------------------------------------------
# token order

def test_single_process_reads_the_lecture_order_with_targets_shifted_by_one(tmp_path):
    shards = write_shards(tmp_path)
    dl = loader(tmp_path)
    expected = lecture_order(shards, B, T, 70)  # 37 steps an epoch: two epochs, five shard changes
    for (x, y), buf in zip(stream(dl, 70), expected):
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (B, T)
        assert torch.equal(x, buf[:-1].view(B, T)) and torch.equal(y, buf[1:].view(B, T))


def test_a_shard_of_a_whole_number_of_steps_keeps_its_last_step_for_the_next_shard_s_first_token(tmp_path):
    # 96 tokens hold 11 steps of B*T = 8, not 12: the 12th would need token 96, one past the end, as its last target
    shards = write_shards(tmp_path, lengths=[96, 48])
    expected = lecture_order(shards, B, T, 24)  # 11 + 5 steps an epoch: into the second epoch
    assert same(stream(loader(tmp_path), 24), [(b[:-1].view(B, T), b[1:].view(B, T)) for b in expected])


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_batches_together_are_the_single_process_stream_with_batch_B_times_world(tmp_path, world, shuffle):
    shards = write_shards(tmp_path)
    steps = 40  # at world 4, 9 steps an epoch: four epochs; at world 1, 37: three shard changes
    single = stream(loader(tmp_path, B=B * world, shuffle=shuffle), steps)
    if not shuffle:
        assert same(single, [(b[:-1].view(B * world, T), b[1:].view(B * world, T))
                             for b in lecture_order(shards, B * world, T, steps)])
    ranks = [stream(loader(tmp_path, rank=r, world=world, shuffle=shuffle), steps) for r in range(world)]
    together = [(torch.cat([ranks[r][i][0] for r in range(world)]), torch.cat([ranks[r][i][1] for r in range(world)]))
                for i in range(steps)]
    assert same(together, single)


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_rank_moves_to_the_next_shard_at_the_same_step_and_uses_every_whole_step(tmp_path, shuffle):
    write_shards(tmp_path)
    world = 4  # a step is 32 tokens: shards of 100, 75, 131 tokens hold 3, 2 and 4 steps
    read = [where_each_batch_comes_from(loader(tmp_path, rank=rank, world=world, shuffle=shuffle), 27)
            for rank in range(world)]
    assert all(steps == read[0] for steps in read)
    # each shard visit lasts (n-1)//32 steps on rank 3 as on rank 0; upstream's bound, which adds
    # rank 3's offset of 24 tokens, would take it off the 75-token shard after one step of two
    visits = [(key, len(list(group))) for key, group in itertools.groupby(read[-1])]
    assert [n for _, n in visits] == [(LENGTHS[shard] - 1) // 32 for (_, _, shard), _ in visits]
    assert len(visits) == 9  # 27 steps: three epochs of three shards


def test_reset_returns_to_the_first_batch(tmp_path):
    write_shards(tmp_path)
    dl = loader(tmp_path, rank=1, world=2)
    first = stream(dl, 3)
    stream(dl, 30)  # well past a shard change and into the next epoch
    dl.reset()
    assert same(stream(dl, 3), first)


def test_verbose_prints_the_number_of_shards_found(tmp_path, capsys):
    write_shards(tmp_path)
    for not_a_shard in ("edufineweb_train_000003.npy.tmp", ".edufineweb_train_000003.npy"):
        (tmp_path / not_a_shard).write_bytes(b"half-written")
    DataLoaderLite(B, T, 0, 1, "train", data_root=str(tmp_path))
    loader(tmp_path)
    assert capsys.readouterr().out == "found 3 shards for split train\n"


# -----------------------------------------------------------------------------
# resuming

@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("stop", [3, 5, 6, 20], ids=["mid-shard", "before-shard-end", "at-shard-end", "next-epoch"])
def test_resumed_loader_yields_the_batches_of_an_uninterrupted_one(tmp_path, stop, shuffle):
    write_shards(tmp_path)
    world = 2  # a step is 16 tokens: shard 0 holds 6 steps, shard 1 holds 4, an epoch 18
    uninterrupted = stream(loader(tmp_path, rank=1, world=world, shuffle=shuffle), stop + 12)
    first = loader(tmp_path, rank=1, world=world, shuffle=shuffle)
    stream(first, stop)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    resumed = loader(tmp_path, rank=1, world=world, shuffle=shuffle)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert same(stream(resumed, 12), uninterrupted[stop:])


def test_state_dict_holds_only_plain_python_values_and_is_the_same_on_every_rank(tmp_path):
    write_shards(tmp_path)
    states = []
    for rank in range(4):
        dl = loader(tmp_path, rank=rank, world=4, shuffle=True)
        stream(dl, 11)
        states.append(dl.state_dict())
    assert all(type(v) in (int, str, bool) for v in states[0].values())
    assert all(s == states[0] for s in states)
    assert states[0] == dict(B=B, T=T, num_processes=4, split="train", shuffle=True, seed=1337,
                             epoch=1, shard=0, window=2, first=0)  # 9 steps an epoch, then 2


@pytest.mark.parametrize("key, change", [("shuffle", dict(shuffle=True)), ("seed", dict(seed=7, shuffle=True))])
def test_resuming_with_other_settings_is_refused_by_name(tmp_path, key, change):
    write_shards(tmp_path)
    state = loader(tmp_path, world=2, shuffle=change.get("shuffle") and key != "shuffle").state_dict()
    with pytest.raises(DataError, match=f"saved with {key}="):
        loader(tmp_path, **{"world": 2, **change}).load_state_dict(state)


def continued(tmp_path, old, new, stop, lengths=LENGTHS, spans=12, indices=None):
    """Where a loader of size `old` stood after `stop` micro-steps (the token it would read next: shard*1000 +
    offset), and the micro-steps a loader of size `new` reads after resuming its state: one span of tokens each,
    all ranks together (tokens name their place)."""
    write_shards(tmp_path, lengths, indices=indices)
    first = loader(tmp_path, B=old["B"], world=old["world"])
    stream(first, stop)
    state = first.state_dict()
    at = first.next_batch()[0][0, 0].item()
    ranks = [loader(tmp_path, B=new["B"], rank=r, world=new["world"]) for r in range(new["world"])]
    for dl in ranks:
        dl.load_state_dict(state)
    reads = [torch.cat([x.flatten() for x, _ in (dl.next_batch() for dl in ranks)]) for _ in range(spans)]
    return at, reads, ranks[0]


@pytest.mark.parametrize("old, new", [(dict(B=2, world=2), dict(B=1, world=2)),   # steps of 16 tokens -> 8
                                      (dict(B=2, world=1), dict(B=2, world=2)),   # 8 -> 16
                                      (dict(B=2, world=1), dict(B=3, world=1)),   # 8 -> 12
                                      (dict(B=1, world=1), dict(B=5, world=1))])  # 4 -> 20
@pytest.mark.parametrize("stop", [3, 5, 11, 17, 30])
def test_a_resume_with_another_step_size_continues_the_same_token_stream(tmp_path, old, new, stop):
    # a smaller B after running out of memory, or another GPU count: the loader goes on from the very token where
    # the saved one stood, in micro-steps of the new size
    at, reads, dl = continued(tmp_path, old, new, stop)
    step = new["B"] * T * new["world"]
    shard, offset = divmod(at, 1000)
    if offset + step < LENGTHS[shard]:  # a whole micro-step of the new size fits: nothing skipped
        assert reads[0][0] == at and dl.skipped_on_resume == 0
    else:  # only the end of that shard is skipped, fewer tokens than a micro-step needs
        assert reads[0][0] == (shard + 1) % len(LENGTHS) * 1000 and dl.skipped_on_resume == LENGTHS[shard] - offset
    for a, b in zip(reads, reads[1:]):
        assert torch.equal(b, b[0] + torch.arange(step))  # one contiguous span a micro-step
        shard, offset = divmod(a[0].item(), 1000)
        if offset + 2 * step < LENGTHS[shard]:
            assert b[0] == a[0] + step  # then step after step, with nothing left out
        else:
            assert b[0] == (shard + 1) % len(LENGTHS) * 1000  # to the next shard where a shard ends


def test_a_resume_at_a_size_at_which_another_shard_is_too_short_maps_the_shard_by_its_file(tmp_path):
    # a step of 8 tokens reads all 3 shards; one of 80 (world 10) skips the 75-token shard 1, so the saved shard
    # index (into the shards that hold a micro-step) points at another file at the new size
    # (micro-steps read, where the saved loader stood, where the resumed one starts, tokens skipped)
    cases = [(1, 8, 8, 0),                # in shard 0, 80 tokens (+1) still fit: from that very token
             (5, 40, 2000, 100 - 40),     # shard 0's 60 tokens left hold no micro-step, nor does shard 1: shard 2
             (13, 1008, 2000, 75 - 8),    # in shard 1, too short at the new size: on to shard 2
             (23, 2016, 2016, 0)]         # in shard 2 (index 2 then, 1 now)
    for stop, at_then, starts, skipped in cases:
        at, reads, dl = continued(tmp_path / str(stop), dict(B=2, world=1), dict(B=2, world=10), stop, spans=2)
        assert (at, reads[0][0].item(), dl.skipped_on_resume) == (at_then, starts, skipped), stop


def test_a_resume_at_another_size_moves_on_to_the_next_shard_by_index_not_by_name(tmp_path):
    # the 75-token shard 1000000 holds no micro-step of 80 tokens: the next is 1000001, though by name 999999 is later
    at, reads, dl = continued(tmp_path, dict(B=2, world=1), dict(B=2, world=10), 13, spans=2,
                              indices=[999999, 1000000, 1000001])
    assert (at, reads[0][0].item(), dl.skipped_on_resume) == (1008, 2000, 75 - 8)


def test_a_resume_at_another_size_maps_the_saved_shard_index_past_a_shard_too_short_at_the_saved_size(tmp_path):
    # guards `n >= old + 1` in _carried_over: the saved shard index counts the shards that held a micro-step of
    # old = 8 tokens (9 with the last target); the 8-token file held none, so saved shard 1 is the 131-token file.
    # Counting the 8-token file too mapped it there, where the saved position (token 8) lies past the end
    write_shards(tmp_path, lengths=[100, 8, 131])
    first = loader(tmp_path, B=2)
    stream(first, 13)  # 12 micro-steps from shard 0 ((100-1)//8), then 1 from the 131-token file
    state = first.state_dict()
    assert (state["shard"], state["window"]) == (1, 1)
    resized = loader(tmp_path, B=3)
    resized.load_state_dict(state)
    assert resized.skipped_on_resume == 0
    assert resized.next_batch()[0][0, 0].item() == 2008  # token 8 of the 131-token file, where B=2 stood


def test_a_resumed_loader_at_another_size_saves_and_resumes_again_exactly(tmp_path):
    write_shards(tmp_path)
    first = loader(tmp_path, B=2)
    stream(first, 7)  # 56 tokens into shard 0: not a whole number of the new 12-token micro-steps
    resized = loader(tmp_path, B=3)
    resized.load_state_dict(first.state_dict())
    stream(resized, 2)
    state = resized.state_dict()
    assert state["first"] == 56 and state["window"] == 2
    uninterrupted = stream(resized, 10)
    again = loader(tmp_path, B=3)
    again.load_state_dict(state)
    assert same(stream(again, 10), uninterrupted)
    other = loader(tmp_path, B=1)  # and on to a third size, from the very token
    other.load_state_dict(state)
    assert other.next_batch()[0][0, 0].item() == 56 + 2 * 12


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_same_micro_step_split_otherwise_resumes_as_saved(tmp_path, shuffle):
    # 2 ranks at B=2 and 1 process at B=4 read the same 16-token spans (fewer GPUs, a larger B): shuffled too
    write_shards(tmp_path)
    ranks = [loader(tmp_path, B=2, rank=r, world=2, shuffle=shuffle) for r in range(2)]
    for _ in range(7):
        for dl in ranks:
            dl.next_batch()
    one = loader(tmp_path, B=4, world=1, shuffle=shuffle)
    one.load_state_dict(ranks[0].state_dict())
    for _ in range(20):  # into the next epoch
        span = torch.cat([x.flatten() for x, _ in (dl.next_batch() for dl in ranks)])
        assert torch.equal(one.next_batch()[0].flatten(), span)
    assert one.skipped_on_resume is None


def test_a_damaged_loader_state_is_refused_by_name(tmp_path):
    write_shards(tmp_path)
    state = loader(tmp_path).state_dict()
    for key, value in [("shard", -1), ("window", -1), ("first", -5), ("epoch", 1.5)]:
        for size in (2, 3):  # at the saved B and at another
            with pytest.raises(DataError, match=f"the loader state's {key} is {value}, not a count: it is damaged"):
                loader(tmp_path, B=size).load_state_dict(dict(state, **{key: value}))


def test_tokens_skipped_on_resume_are_said_for_that_resume_only(tmp_path):
    write_shards(tmp_path)
    first = loader(tmp_path)
    stream(first, 11)  # 88 tokens into shard 0, of 100: a micro-step of 16 (+1) no longer fits there
    resized = loader(tmp_path, world=2)
    resized.load_state_dict(first.state_dict())
    assert resized.skipped_on_resume == 12
    resized.load_state_dict(resized.state_dict())  # a resume at its own size skips nothing
    assert resized.skipped_on_resume is None
    resized.load_state_dict(first.state_dict())
    resized.reset()
    assert resized.skipped_on_resume is None


def test_a_shuffled_loader_refuses_another_step_size_on_resume(tmp_path):
    write_shards(tmp_path)
    state = loader(tmp_path, world=2, shuffle=True).state_dict()
    with pytest.raises(DataError, match=r"saved with B\*T\*num_processes = 2\*4\*2 but this loader has 2\*4\*1, and a "
                                        "shuffled order cannot be carried over"):
        loader(tmp_path, world=1, shuffle=True).load_state_dict(state)


def test_resuming_into_a_smaller_data_folder_is_refused(tmp_path):
    write_shards(tmp_path)
    dl = loader(tmp_path)
    stream(dl, 30)  # into the third shard
    state = dl.state_dict()
    small = tmp_path / "small"
    write_shards(small, LENGTHS[:2])
    with pytest.raises(DataError, match="data folder changed"):
        loader(small).load_state_dict(state)


def test_a_state_one_micro_step_past_the_shards_last_is_refused(tmp_path):
    # guards `window < len(windows)` in load_state_dict: shard 0 (100 tokens) holds micro-steps 0..11 of 8 tokens;
    # a state at 12 (no loader saves one: it moves on to the next shard) is a folder that changed
    write_shards(tmp_path)
    state = loader(tmp_path).state_dict()
    dl = loader(tmp_path)
    dl.load_state_dict(dict(state, window=11))  # the last one
    assert dl.next_batch()[0][0, 0].item() == 88
    with pytest.raises(DataError, match="micro-step 12 of shard 0, which holds fewer: the data folder changed"):
        loader(tmp_path).load_state_dict(dict(state, window=12))


def test_a_state_at_another_size_whose_micro_step_ends_past_its_shard_is_refused(tmp_path):
    # guards `at + old < n` in _carried_over: window 11 of 8 tokens starts at 88 of a 96-token shard and needs
    # tokens 88..96, one more than it holds; `<=` took it, and the resume at B=3 went on to the next shard
    write_shards(tmp_path, lengths=[96, 48])
    state = loader(tmp_path, B=2).state_dict()
    resized = loader(tmp_path, B=3)
    resized.load_state_dict(dict(state, window=10))  # at 80: 80..88 fitted at B=2
    assert resized.next_batch()[0][0, 0].item() == 80
    with pytest.raises(DataError, match="micro-step 11 of shard 0, which holds fewer: the data folder changed"):
        loader(tmp_path, B=3).load_state_dict(dict(state, window=11))


# -----------------------------------------------------------------------------
# shuffling

def epoch_of(dl):
    """One epoch's batches as token tuples, and the order in which it visited the shards."""
    start, batches, shards = dl.epoch, [], []
    while dl.epoch == start:
        if not shards or shards[-1] != dl.current_shard:
            shards.append(dl.current_shard)
        batches.append(tuple(dl.next_batch()[0].flatten().tolist()))
    return batches, shards


def test_shuffled_epochs_are_permutations_of_the_same_windows_and_differ_from_each_other(tmp_path):
    write_shards(tmp_path)
    plain, plain_shards = epoch_of(loader(tmp_path, rank=1, world=2))
    dl = loader(tmp_path, rank=1, world=2, shuffle=True)
    epochs = [epoch_of(dl) for _ in range(4)]
    assert plain_shards == [0, 1, 2]
    for batches, shards in epochs:
        assert sorted(batches) == sorted(plain) and len(batches) == 18
        assert sorted(shards) == [0, 1, 2]
    assert all(batches != plain for batches, _ in epochs)
    assert len({tuple(batches) for batches, _ in epochs}) == 4  # no two epochs alike
    assert len({tuple(shards) for _, shards in epochs}) > 1  # the shard order changes too


def test_shuffle_is_reproducible_from_the_seed_and_identical_on_every_rank(tmp_path):
    write_shards(tmp_path)
    runs = {seed: stream(loader(tmp_path, rank=1, world=2, shuffle=True, seed=seed), 40) for seed in (1337, 1338)}
    assert same(stream(loader(tmp_path, rank=1, world=2, shuffle=True, seed=1337), 40), runs[1337])
    assert not same(runs[1338], runs[1337])
    # identical on every rank: rank 0 reads the B*T tokens just before rank 1's, in the same window
    rank0 = stream(loader(tmp_path, rank=0, world=2, shuffle=True), 40)
    assert all(torch.equal(x1.flatten()[0] - x0.flatten()[0], torch.tensor(B * T))
               for (x0, _), (x1, _) in zip(rank0, runs[1337]))


# -----------------------------------------------------------------------------
# bad input

def test_no_shards_names_the_folder_and_the_command_that_makes_them(tmp_path, monkeypatch):
    write_shards(tmp_path, split="val")  # val shards only
    for folder in (tmp_path, tmp_path / "missing"):
        with pytest.raises(DataError, match=rf"no shards for split 'train' in {folder}/.*python fineweb.py.*--files"):
            loader(folder)
    # the command writes into this folder (fineweb.py's default is the lecture's edu_fineweb10B/), quoted to copy
    with pytest.raises(DataError) as e:
        loader(tmp_path / "my data")
    command = re.search(r"`(python fineweb.py[^`]*)`", str(e.value))[1]
    assert shlex.split(command) == ["python", "fineweb.py", "--local-dir", str(tmp_path / "my data")]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        loader(LOCAL_DIR)
    assert "make them with `python fineweb.py` (or `python fineweb.py --files ...` for local text)" in str(e.value)


def test_a_shard_shorter_than_one_step_is_skipped_and_named(tmp_path, capsys):
    # fineweb.py's last shard holds what was left over, as little as one token
    shards = write_shards(tmp_path, lengths=[100, 75, 131, 1])
    dl = DataLoaderLite(B, T, 0, 10, "train", data_root=str(tmp_path))  # one step: 2*4*10+1 = 81 tokens
    assert re.findall(r"skipping .*(edufineweb_train_00000\d.npy): its (\d+) tokens are fewer than one micro-step "
                      r"needs \(B\*T\*num_processes\+1 = 2\*4\*10\+1 = 81\)", capsys.readouterr().out) == [
        ("edufineweb_train_000001.npy", "75"), ("edufineweb_train_000003.npy", "1")]
    # one step from shard 0, one from shard 2, then shard 0 again
    firsts = [int(x[0, 0]) for x, _ in stream(dl, 3)]
    assert firsts == [int(shards[0][0]), int(shards[2][0]), int(shards[0][0])]


def test_a_shard_of_exactly_one_micro_step_is_kept(tmp_path, capsys):
    # guards `n >= need`: 81 tokens hold one micro-step of 2*4*10 (+1 for the last target); `>` skipped the shard
    shards = write_shards(tmp_path, lengths=[81, 100])
    dls = [DataLoaderLite(B, T, r, 10, "train", data_root=str(tmp_path)) for r in (0, 9)]
    assert "skipping" not in capsys.readouterr().out
    assert [int(x[0, 0]) for x, _ in stream(dls[0], 3)] == [0, 1000, 0]  # shard 0, shard 1, shard 0 again
    assert int(dls[1].next_batch()[1][-1, -1]) == int(shards[0][80])  # the last rank's last target: its last token


def test_shards_all_shorter_than_one_step_are_an_error_naming_the_longest(tmp_path):
    write_shards(tmp_path)
    with pytest.raises(DataError, match=r"edufineweb_train_000002.npy has 131 tokens, fewer than one micro-step needs: "
                                        r"B\*T\*num_processes\+1 = 2\*4\*20\+1 = 161, and no train shard has more; "
                                        r"use a smaller B or T"):
        loader(tmp_path, world=20)


@pytest.mark.parametrize("array, described", [
    (np.arange(100, dtype=np.int32), r"dtype int32, shape \(100,\)"),
    (np.zeros((10, 10), dtype=np.uint16), r"dtype uint16, shape \(10, 10\)"),
])
def test_a_file_that_is_not_a_1d_uint16_array_is_named_with_its_dtype_and_shape(tmp_path, array, described):
    write_shards(tmp_path)
    np.save(tmp_path / "edufineweb_train_000001.npy", array)
    with pytest.raises(DataError, match=rf"edufineweb_train_000001.npy is not a 1-D uint16 token array: {described}"):
        loader(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_file_that_cannot_be_loaded_as_npy_is_named(tmp_path, damage):
    write_shards(tmp_path)
    path = tmp_path / "edufineweb_train_000002.npy"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:200], "empty": b"", "text": b"not a numpy file"}[damage])
    with pytest.raises(DataError, match=r"edufineweb_train_000002.npy cannot be loaded as a .npy array.*truncated"):
        loader(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_shard_name_that_is_no_regular_file_is_named_without_blocking(tmp_path):
    write_shards(tmp_path, [100])
    os.mkfifo(tmp_path / "edufineweb_train_000001.npy")  # reading its header would wait for a writer forever
    with pytest.raises(DataError, match=r"edufineweb_train_000001.npy is not a regular file, so not a shard$"):
        loader(tmp_path)


def test_a_shard_cut_short_after_it_was_checked_is_named_at_the_batch_that_runs_past_its_end(tmp_path):
    # np.fromfile returns what is there: a short read would have failed in .view() with torch's shape error
    write_shards(tmp_path, [100])
    dl = loader(tmp_path)
    header = np.lib.format.open_memmap(tmp_path / "edufineweb_train_000000.npy", mode="r").offset
    os.truncate(tmp_path / "edufineweb_train_000000.npy", header + 2 * 20)
    assert dl.next_batch()[0].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # tokens 0-8: still there
    dl.next_batch()  # tokens 8-16
    with pytest.raises(DataError, match=re.escape(
            "edufineweb_train_000000.npy ends before token 25, which this micro-step reads, although its header says "
            "100: it was cut short after it was checked; restore it, or rerun the fineweb.py command that made it")):
        dl.next_batch()


def test_shards_from_index_1000000_on_are_read_in_index_order(tmp_path, capsys):
    # fineweb.py's {index:06d} has seven digits from shard 1,000,000 on; a six-digit pattern dropped them unsaid
    indices = [100001, 999999, 1000000, 1000001, 12345678]
    write_shards(tmp_path, [100] * len(indices), indices=indices)
    dl = DataLoaderLite(B, T, 0, 10, "train", data_root=str(tmp_path))  # one 81-token micro-step a shard
    assert capsys.readouterr().out == "found 5 shards for split train\n"
    assert [os.path.basename(p) for p in dl.shards] == [shard_name("edufineweb", i) for i in indices]
    assert [int(x[0, 0]) for x, _ in stream(dl, 6)] == [0, 1000, 2000, 3000, 4000, 0]  # written in this order


@pytest.mark.parametrize("args, message", [
    (dict(B=0), "B and T must be positive"),
    (dict(T=-1), "B and T must be positive"),
    (dict(rank=2, world=2), "process_rank must be in 0..1"),
    (dict(rank=-1, world=2), "process_rank must be in 0..1"),
])
def test_bad_arguments_are_refused_with_the_rule_they_break(tmp_path, args, message):
    write_shards(tmp_path)
    with pytest.raises(DataError, match=message):
        loader(tmp_path, **args)


def test_an_unknown_split_is_refused(tmp_path):
    write_shards(tmp_path)
    with pytest.raises(DataError, match="split must be 'train' or 'val', got 'test'"):
        DataLoaderLite(B, T, 0, 1, "test", data_root=str(tmp_path))


# -----------------------------------------------------------------------------
# fineweb.py's manifest.json beside the shards

def fineweb_folder(folder, shards, finish=True, shard_size=100):
    """What fineweb.py's ShardWriter leaves for a stream of `shards` whole shards and a 40-token last one: a finished
    run, or (finish=False) one stopped after its last whole shard, whose manifest says incomplete."""
    writer = ShardWriter(str(folder), shard_size, config={"files": "test"})
    tokens = np.arange(shards * shard_size + 40, dtype=np.uint16) % 1000
    tokens[7::50] = EOT  # a document every 50 tokens; the others name their place in the stream
    writer.add(tokens)
    if finish:
        writer.finish()
    return folder


def shard(folder, index):
    return folder / shard_name("edufineweb", index)


def test_an_unfinished_fineweb_run_is_trained_on_with_one_warning_a_process(tmp_path, capsys):
    # a run stopped after its last whole shard: val 0 and train 1-5 are there, the manifest says incomplete
    folder = fineweb_folder(tmp_path / "data", 6, finish=False)
    loaders = [DataLoaderLite(B, T, rank, 2, split, data_root=str(folder), verbose=rank == 0)
               for split in ("train", "val") for rank in (0, 1)]  # what two ranks of train_gpt2.py build
    out, err = capsys.readouterr()
    assert out == "found 5 shards for split train\nfound 1 shards for split val\n"
    assert err == (f"warning: {folder}/ holds an unfinished fineweb.py run (manifest.json says it is incomplete): "
                   "training on the shards it has so far; rerun fineweb.py with the same arguments to finish it\n")
    assert [int(x[0, 0]) for x, _ in stream(loaders[0], 7)] == [100, 116, 132, 148, 164, 180, 200]  # shard 2 at 200
    loader(folder)
    assert capsys.readouterr() == ("", "")  # once a process, not once a loader


def test_only_rank_0_warns_of_an_unfinished_run(tmp_path, capsys):
    folder = fineweb_folder(tmp_path, 3, finish=False)
    loader(folder, rank=1, world=2)
    assert capsys.readouterr() == ("", "")


def test_a_finished_fineweb_folder_is_read_without_a_warning(tmp_path, capsys):
    folder = fineweb_folder(tmp_path, 6)  # train 1-5 and the 40-token last shard 6
    dl = DataLoaderLite(B, T, 0, 1, "train", data_root=str(folder))
    assert capsys.readouterr() == ("found 6 shards for split train\n", "")
    assert [os.path.basename(p) for p in dl.shards] == [shard_name("edufineweb", i) for i in range(1, 7)]


def test_a_shard_another_run_wrote_over_is_refused_naming_both_sizes(tmp_path):
    # two fineweb.py runs in one folder: the other's shard 3 stands where this run recorded its own
    folder = fineweb_folder(tmp_path, 6)
    np.save(shard(folder, 3), np.arange(90, dtype=np.uint16))
    with pytest.raises(DataError) as e:
        loader(folder)
    assert str(e.value) == (f"{shard(folder, 3)} has 308 bytes but {folder}/manifest.json records 328: it changed "
                            "after fineweb.py wrote it; rerun the fineweb.py command that made this folder (it "
                            "rewrites the shards from that one on)")


@pytest.mark.parametrize("finish", [True, False])
def test_a_shard_the_manifest_records_that_is_gone_is_refused(tmp_path, finish):
    folder = fineweb_folder(tmp_path, 6, finish=finish)
    os.remove(shard(folder, 2))
    with pytest.raises(DataError) as e:
        loader(folder)
    assert str(e.value) == (f"{folder}/manifest.json records edufineweb_train_000002.npy but it is not in {folder}/: "
                            "rerun the fineweb.py command that made this folder (it rewrites the shards from that one "
                            "on), or delete manifest.json to train on the shards that are there")


def test_a_shard_a_finished_run_did_not_record_is_refused_but_an_unfinished_run_s_is_read(tmp_path, capsys):
    # a run stopped between writing a shard and recording it leaves it whole but unrecorded; a finished run recorded
    # every shard, so one it did not came from elsewhere
    for finish in (True, False):
        folder = fineweb_folder(tmp_path / str(finish), 4, finish=finish)
        np.save(shard(folder, 7), np.arange(100, dtype=np.uint16))
        if finish:
            with pytest.raises(DataError) as e:
                loader(folder)
            assert str(e.value) == (f"{shard(folder, 7)} is not among the 4 train shards that {folder}/manifest.json "
                                    "records for the finished fineweb.py run that made this folder: it came from "
                                    "elsewhere; move it out")
        else:
            assert len(loader(folder).shards) == 4  # train 1-3 and 7
            assert "unfinished fineweb.py run" in capsys.readouterr().err


@pytest.mark.parametrize("text, problem", [
    ('{"complete": true, "shards": [', r"is not valid JSON \(Expecting value: line 1 column 31 \(char 30\)\)"),
    ("", r"is not valid JSON \(Expecting value: line 1 column 1 \(char 0\)\)"),
    ("[]", "does not list the shards' files and sizes as fineweb.py writes it"),
    ('{"complete": true}', "does not list the shards' files and sizes as fineweb.py writes it"),
    ('{"shards": [{"file": "edufineweb_train_000001.npy", "bytes": "328"}]}',
     "does not list the shards' files and sizes as fineweb.py writes it"),
])
def test_a_damaged_manifest_is_one_error_naming_it(tmp_path, text, problem):
    folder = fineweb_folder(tmp_path, 3)
    (folder / "manifest.json").write_text(text)
    with pytest.raises(DataError, match=rf"^{re.escape(str(folder))}/manifest.json {problem}: it is damaged; remake "
                                        r"this folder with fineweb.py, or delete manifest.json to train on the "
                                        r"shards unchecked$"):
        loader(folder)


# -----------------------------------------------------------------------------
# CUDA

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_the_cpu_batches(tmp_path):
    write_shards(tmp_path)
    cpu = stream(loader(tmp_path, rank=1, world=2), 30)
    dl, gpu, busy = loader(tmp_path, rank=1, world=2, device="cuda"), [], torch.randn(4096, 4096, device="cuda")
    for _ in range(30):
        busy @ busy  # queue work ahead of each copy, so the host pins the next batches while copies wait
        gpu.append(dl.next_batch())
    assert all(x.is_cuda and y.is_cuda for x, y in gpu)
    assert same([(x.cpu(), y.cpu()) for x, y in gpu], cpu)


# -----------------------------------------------------------------------------
# the command line: what a data folder holds

def run_cli(*args, prefix=()):
    return subprocess.run([*prefix, sys.executable, os.path.join(ROOT, "dataloaderlite.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_lists_each_splits_shards_and_tokens(tmp_path):
    write_shards(tmp_path, [1000], split="val")
    write_shards(tmp_path, [300, 700, 2500])
    out = run_cli(str(tmp_path))
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == "val: 1 shard, 1,000 tokens\ntrain: 3 shards, 3,500 tokens\n"


def test_cli_names_a_broken_shard_as_training_would(tmp_path):
    write_shards(tmp_path, [1000], split="val")
    np.save(tmp_path / "edufineweb_train_000001.npy", np.zeros(10, dtype=np.int32))
    out = run_cli(str(tmp_path))
    assert (out.returncode, out.stdout) == (1, "val: 1 shard, 1,000 tokens\n")
    assert out.stderr == (f"error: {tmp_path}/edufineweb_train_000001.npy is not a 1-D uint16 token array: "
                          "dtype int32, shape (10,)\n")


def test_cli_names_a_shard_or_folder_this_user_may_not_read_without_advice_to_delete_it(tmp_path):
    # an unreadable folder was a PermissionError traceback; an unreadable shard was "truncated or not a shard;
    # delete it", advice that would lose a good shard
    from conftest import without_root_override
    write_shards(tmp_path / "a", [1000], split="val")
    write_shards(tmp_path / "a", [1000])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.chmod(tmp_path / "a" / "edufineweb_train_000000.npy", 0)
    os.chmod(tmp_path / "b", 0)
    try:
        shard = run_cli(str(tmp_path / "a"), prefix=without_root_override())
        folder = run_cli(str(tmp_path / "b"), prefix=without_root_override())
    finally:
        os.chmod(tmp_path / "b", 0o755)
    assert (shard.returncode, shard.stderr) == (1, f"error: cannot read {tmp_path}/a/edufineweb_train_000000.npy "
                                                   "(Permission denied): give this user read access to it\n")
    assert (folder.returncode, folder.stderr) == (1, f"error: cannot list the shards in {tmp_path}/b/ "
                                                     "(Permission denied)\n")


def test_cli_says_a_folder_of_a_killed_fineweb_run_is_incomplete(tmp_path):
    # the real thing: fineweb.py killed in the middle of writing shard 7 (its test hook), then the folder checked
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": topics[name]}) + "\n"
                                                 for name in sorted(topics)[:60]))
    fineweb = subprocess.run([sys.executable, os.path.join(ROOT, "fineweb.py"), "--files", "docs.jsonl", "--local-dir",
                              "k7", "--shard-size", "1000", "--num-proc", "1", "--quiet"], cwd=tmp_path,
                             env=dict(os.environ, FINEWEB_CRASH_AFTER_SHARDS="7"), capture_output=True, timeout=120)
    assert fineweb.returncode == 137
    assert sorted(os.listdir(tmp_path / "k7"))[-2:] == ["edufineweb_val_000000.npy", "manifest.json"]
    out = run_cli(str(tmp_path / "k7"))
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == ("val: 1 shard, 1,000 tokens\ntrain: 6 shards, 6,000 tokens\n"
                          "incomplete: manifest.json says the fineweb.py run that writes this folder has not finished; "
                          "rerun fineweb.py with the same arguments to finish it\n")


def test_cli_names_a_shard_that_differs_from_the_manifest_as_training_would(tmp_path):
    folder = fineweb_folder(tmp_path, 3)
    np.save(shard(folder, 2), np.arange(10, dtype=np.uint16))
    out = run_cli(str(folder))
    assert (out.returncode, out.stdout) == (1, "val: 1 shard, 100 tokens\n")
    assert out.stderr == (f"error: {shard(folder, 2)} has 148 bytes but {folder}/manifest.json records 328: it changed "
                          "after fineweb.py wrote it; rerun the fineweb.py command that made this folder (it rewrites "
                          "the shards from that one on)\n")


def test_cli_help_says_it_is_a_library_with_a_folder_check():
    out = run_cli("--help")
    assert out.returncode == 0
    assert "A library for train_gpt2.py" in out.stdout and "data_root" in out.stdout


def test_a_token_id_at_or_beyond_the_vocab_size_is_a_data_error_naming_shard_and_position(tmp_path):
    write_shards(tmp_path)  # shard i holds i*1000, i*1000+1, ...: shard 1 starts at 1000
    dl = loader(tmp_path, vocab_size=1000)
    stream(dl, 12)  # shard 0 (ids 0-99): 12 batches of B*T+1 = 9 tokens, all below 1000
    with pytest.raises(DataError) as e:
        dl.next_batch()
    assert str(e.value) == (f"{tmp_path / 'edufineweb_train_000001.npy'} holds token id 1000 (its token 0), out of "
                            "range for the model's vocab_size 1,000: the shards come from another tokenizer than "
                            "GPT-2's, or the vocab_size is below its 50,257 tokens")
    dl = loader(tmp_path, vocab_size=1001)  # 1000 is in range; 1001 the first id out of it
    stream(dl, 12)
    with pytest.raises(DataError, match=r"holds token id 1001 \(its token 1\)"):
        dl.next_batch()
    dl = loader(tmp_path)  # no vocab_size: no check (shard 2 holds ids up to 2130)
    assert int(torch.cat([y.flatten() for _, y in stream(dl, 40)]).max()) == 2128
