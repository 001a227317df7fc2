"""EpochShuffle's length grouping, hand-worked: batches of similar lengths, on one rank and on two."""

from torch.utils.data import DataLoader

from prospect.data.datamodule import EpochShuffle

LENGTHS = [5, 1, 9, 3, 7, 2, 8, 4]


def _batches(sampler: EpochShuffle, lengths: list[int], batch_size: int = 2) -> list[list[int]]:
    """The lengths of each batch a DataLoader makes with this sampler (the dataset item is its length)."""
    loader = DataLoader(lengths, batch_size=batch_size, sampler=sampler)
    return [b.tolist() for b in loader]


def test_one_group_sorts_the_whole_epoch_by_length():
    for epoch in (0, 1):
        shuffle = EpochShuffle(len(LENGTHS), seed=3, lengths=LENGTHS, group=len(LENGTHS))
        shuffle.set_epoch(epoch)
        assert _batches(shuffle, LENGTHS) == [[9, 8], [7, 5], [4, 3], [2, 1]]  # 5 padding tokens, the fewest


def test_groups_of_four_are_each_sorted_and_cover_the_epoch():
    orders = []
    for epoch in range(4):
        shuffle = EpochShuffle(len(LENGTHS), seed=3, lengths=LENGTHS, group=4)
        shuffle.set_epoch(epoch)
        order = list(shuffle)
        assert sorted(order) == list(range(len(LENGTHS)))
        for start in (0, 4):
            group = [LENGTHS[i] for i in order[start:start + 4]]
            assert group == sorted(group, reverse=True), (epoch, group)
        orders.append(order)
    assert len({tuple(o) for o in orders}) > 1, "the groups are re-drawn each epoch"
    again = EpochShuffle(len(LENGTHS), seed=3, lengths=LENGTHS, group=4)
    again.set_epoch(3)
    assert list(again) == orders[3], "the order depends only on (seed, epoch): exact across resumes"


def test_two_ranks_take_alternate_indices_of_the_sorted_order():
    ranks = [_batches(EpochShuffle(len(LENGTHS), 3, LENGTHS, len(LENGTHS), num_replicas=2, rank=r), LENGTHS)
             for r in (0, 1)]
    assert ranks == [[[9, 7], [4, 2]], [[8, 5], [3, 1]]]
    odd = LENGTHS[:7]  # 9 8 7 5 3 2 1: rank 1 wraps around to the first index, so both get as many
    ranks = [_batches(EpochShuffle(len(odd), 3, odd, len(odd), num_replicas=2, rank=r), odd) for r in (0, 1)]
    assert ranks == [[[9, 7], [3, 1]], [[8, 5], [2, 9]]]

