"""GroupedKeySampler: batches of S distinct groups x M items, epoch coverage, determinism, DDP
shares and exact mid-epoch resume through ResumableDataLoader."""

from collections import Counter

import numpy as np
import pytest
from torch.utils.data import Dataset

from aukit.data.sampling import GroupedKeySampler, ResumableDataLoader

# 9 groups of uneven size; "g8" (3 items) is too small for M = 4 and is left out
SIZES = {"g0": 12, "g1": 9, "g2": 4, "g3": 7, "g4": 8, "g5": 16, "g6": 5, "g7": 6, "g8": 3}
GROUPS = [g for g, n in SIZES.items() for _ in range(n)]
N = len(GROUPS)
S, M = 3, 4


class Keys(Dataset):
    """Serves its keys, so batches show what the sampler chose."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, key: int) -> int:
        return key


def batches_of(sampler: GroupedKeySampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    keys = list(sampler)
    size = sampler.batch_size
    return [keys[i:i + size] for i in range(0, len(keys), size)]


def check_batch(batch: list[int], epoch: int) -> None:
    assert all(k // N == epoch for k in batch)  # keys are epoch * N + i
    runs = [batch[j * M:(j + 1) * M] for j in range(S)]  # a group's M items are consecutive
    owners = [{GROUPS[k % N] for k in run} for run in runs]
    assert all(len(o) == 1 for o in owners)
    assert len(set.union(*owners)) == S  # S distinct groups
    assert len(set(batch)) == S * M  # no item twice


def test_batches_hold_s_distinct_groups_of_m_items_and_cover_every_group():
    sampler = GroupedKeySampler(GROUPS, S, M, seed=5)
    # chunks per group: ceil(n / 4) for the 8 groups of >= 4 items = 3+3+1+2+2+4+2+2 = 19,
    # at most one per batch: 6 batches take 18 of them
    assert len(sampler) == 6 * S * M
    for epoch in (0, 1):
        batches = batches_of(sampler, epoch)
        assert len(batches) == 6
        for batch in batches:
            check_batch(batch, epoch)
        served = {k % N for b in batches for k in b}
        assert {GROUPS[i] for i in served} == set(SIZES) - {"g8"}
        per_group = Counter(GROUPS[i] for i in served)
        whole = [g for g in per_group if per_group[g] == SIZES[g]]
        assert len(whole) >= 7  # only the group whose chunk was the 19th can miss items


def test_an_epoch_covers_the_data_once_when_groups_divide_evenly():
    groups = [i // 8 for i in range(10 * 8)]  # 10 subjects x 8 faces, 2 chunks of 4 each
    sampler = GroupedKeySampler(groups, 4, 4)
    keys = list(sampler)
    assert sorted(keys) == list(range(80))


def test_a_dominant_group_gives_at_most_one_chunk_per_batch():
    groups = ["big"] * 200 + [f"s{i}" for i in range(6) for _ in range(4)]
    sampler = GroupedKeySampler(groups, 2, 4, seed=1)
    batches = batches_of(sampler, 0)
    assert len(batches) == 6  # one per small chunk, each paired with a chunk of "big"
    assert all(sum(groups[k] == "big" for k in b) == 4 for b in batches)


def test_batches_are_a_function_of_seed_and_epoch():
    first, again = GroupedKeySampler(GROUPS, S, M, seed=5), GroupedKeySampler(GROUPS, S, M, seed=5)
    assert batches_of(first, 3) == batches_of(again, 3)
    assert np.array_equal(first.epoch_batches(), again.epoch_batches())
    later = [[k - N for k in b] for b in batches_of(first, 4)]  # same items, epoch 3's keys
    assert later != batches_of(first, 3)
    other_seed = GroupedKeySampler(GROUPS, S, M, seed=6)
    assert batches_of(other_seed, 3) != batches_of(first, 3)


def test_ranks_get_disjoint_whole_batches_and_the_same_number():
    groups = [i // 8 for i in range(14 * 8)]  # 28 chunks: 7 batches, 3 per rank, one dropped
    ranks = [GroupedKeySampler(groups, 4, 4, seed=2, num_replicas=2, rank=r) for r in range(2)]
    for epoch in (0, 1):
        served = [batches_of(sampler, epoch) for sampler in ranks]
        assert len(served[0]) == len(served[1]) == 3
        keys = [{k for b in batches for k in b} for batches in served]
        assert not keys[0] & keys[1]
        for batches in served:
            for batch in batches:
                runs = [batch[j * 4:(j + 1) * 4] for j in range(4)]
                assert all(len({groups[k % len(groups)] for k in run}) == 1 for run in runs)
                assert len({groups[k % len(groups)] for k in batch}) == 4
        whole = [b.reshape(-1) for b in ranks[0].epoch_batches()[:6]]
        assert [list(b + epoch * len(groups)) for b in whole[0::2]] == served[0]


def test_a_resumed_loader_serves_exactly_the_rest_of_the_epoch():
    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(Keys(), S * M, sampler=GroupedKeySampler(GROUPS, S, M, seed=9))

    full = loader()
    full.sampler.set_epoch(2)
    expected = [b.tolist() for b in full]
    stopped = loader()
    stopped.sampler.set_epoch(2)
    it = iter(stopped)
    served = [next(it).tolist() for _ in range(2)]
    state = stopped.state_dict()
    assert state == {"epoch": 2, "consumed": 2}
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert served + [b.tolist() for b in resumed] == expected
    resumed.sampler.set_epoch(3)  # the skip applies to the resumed epoch only
    assert len(list(resumed)) == len(expected)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="groups_per_batch >= 1"):
        GroupedKeySampler(GROUPS, 0, M)
    with pytest.raises(ValueError, match=r"2 of 9 groups have at least 12 items.*0 batches"):
        GroupedKeySampler(GROUPS, S, 12)
    with pytest.raises(ValueError, match="batches of 12 keys but the loader batches 8"):
        ResumableDataLoader(Keys(), 8, sampler=GroupedKeySampler(GROUPS, S, M))


def test_group_codes_are_equal_exactly_where_the_ids_are():
    from aukit.utils.groups import group_codes
    codes = group_codes(["F002", 7, ("F001", "T1"), "F002", 7])
    assert codes[0] == codes[3] and codes[1] == codes[4] and len(set(codes)) == 3
    assert list(group_codes(["b", "a", "b"])) == [1, 0, 1]  # sorted: the same on every rank
