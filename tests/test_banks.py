"""desupcon.nn.banks: momentum memory bank and FIFO queue, checked value by value."""

import io
import math

import pytest
import torch

from desupcon.nn.banks import FIFOQueue, MomentumMemoryBank


# ---- MomentumMemoryBank ------------------------------------------------------------------------


def test_bank_starts_with_seeded_unit_rows_and_unknown_labels():
    bank = MomentumMemoryBank(50, 8, seed=3)
    assert bank.feats.shape == (50, 8) and bank.feats.dtype == torch.float32
    assert torch.allclose(bank.feats.norm(dim=1), torch.ones(50))
    assert torch.equal(bank.labels, torch.full((50,), -1))
    assert torch.equal(bank.feats, MomentumMemoryBank(50, 8, seed=3).feats)
    assert not torch.equal(bank.feats, MomentumMemoryBank(50, 8, seed=4).feats)


def test_bank_update_blends_and_renormalises():
    bank = MomentumMemoryBank(5, 3, momentum=0.5)
    bank.feats[1] = torch.tensor([1.0, 0.0, 0.0])
    bank.feats[3] = torch.tensor([0.0, 0.6, 0.8])
    untouched = bank.feats[[0, 2, 4]].clone()

    new = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.8, 0.6]])
    bank.update(torch.tensor([1, 3]), new, torch.tensor([7, 2]))

    # slot 1: 0.5·(1, 0, 0) + 0.5·(0, 3, 0) = (0.5, 1.5, 0), norm √2.5
    # slot 3: 0.5·(0, .6, .8) + 0.5·(0, .8, .6) = (0, .7, .7), norm .7·√2
    r = math.sqrt(2.5)
    assert bank.feats[1].tolist() == pytest.approx([0.5 / r, 1.5 / r, 0.0])
    assert bank.feats[3].tolist() == pytest.approx([0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert torch.equal(bank.feats[[0, 2, 4]], untouched)
    assert bank.labels.tolist() == [-1, 7, -1, 2, -1]


def test_literal_bank_update_and_sampling_follow_the_write_up_line_by_line():
    """The write-ups' ``memory[i] = 0.5 * memory_old[i] + 0.5 * feature_new[i]`` (no renormalisation) and
    ``randperm(N)[:k]`` (the step's own slots may be drawn), against plain Python lists."""
    bank = MomentumMemoryBank(6, 3, momentum=0.5, seed=1, renormalise=False)
    old = bank.feats.tolist()
    new = [[3.0, 0.0, 4.0], [0.0, 2.0, 0.0]]
    bank.update(torch.tensor([4, 1]), torch.tensor(new))
    expected = [row[:] for row in old]
    for slot, row in zip([4, 1], new):
        expected[slot] = [0.5 * a + 0.5 * b for a, b in zip(old[slot], row)]
    assert torch.allclose(bank.feats, torch.tensor(expected), atol=1e-6)
    assert bank.feats[4].norm() > 1.5  # not renormalised
    drawn = {int(i) for _ in range(40) for i in bank.sample(2)[2]}  # no exclusion: every slot can come up
    assert drawn == set(range(6))
    g = torch.Generator().manual_seed(3)
    _, _, indices = bank.sample(6, generator=g)
    assert sorted(indices.tolist()) == list(range(6))


def test_bank_update_with_other_momentum_and_without_labels():
    bank = MomentumMemoryBank(3, 2, momentum=0.75)
    bank.feats[0] = torch.tensor([1.0, 0.0])
    bank.labels[0] = 4
    bank.update(torch.tensor([0]), torch.tensor([[0.0, 1.0]]))
    # 0.75·(1, 0) + 0.25·(0, 1) = (0.75, 0.25), norm √0.625
    r = math.sqrt(0.625)
    assert bank.feats[0].tolist() == pytest.approx([0.75 / r, 0.25 / r])
    assert bank.labels.tolist() == [4, -1, -1]  # labels=None keeps the stored label


def test_bank_zero_momentum_overwrites():
    bank = MomentumMemoryBank(4, 2, momentum=0.0)
    bank.update(torch.tensor([2]), torch.tensor([[3.0, 4.0]]))
    assert bank.feats[2].tolist() == pytest.approx([0.6, 0.8])


def labelled_bank(n=20, dim=4):
    bank = MomentumMemoryBank(n, dim)
    bank.labels.copy_(torch.arange(n) % 3)
    return bank


def test_sample_excludes_returns_distinct_matching_rows():
    bank = labelled_bank()
    exclude = torch.tensor([0, 3, 4, 9, 17])
    seen = set()
    for _ in range(200):
        feats, labels, idx = bank.sample(6, exclude=exclude)
        assert len(set(idx.tolist())) == 6
        assert not set(idx.tolist()) & set(exclude.tolist())
        assert torch.equal(feats, bank.feats[idx])
        assert torch.equal(labels, bank.labels[idx])
        seen.update(idx.tolist())
    assert seen == set(range(20)) - set(exclude.tolist())  # every free slot gets drawn


def test_sample_can_take_every_free_slot_and_no_more():
    bank = labelled_bank()
    exclude = torch.tensor([1, 1, 2, 5])  # the repeated 1 counts once: 17 free slots
    _, _, idx = bank.sample(17, exclude=exclude)
    assert sorted(idx.tolist()) == sorted(set(range(20)) - {1, 2, 5})
    with pytest.raises(ValueError, match=r"k=18 exceeds the free slots \(the 20 slots minus the excluded ones\)"):
        bank.sample(18, exclude=exclude)
    with pytest.raises(ValueError, match=r"k=21 exceeds the free slots"):
        bank.sample(21)
    with pytest.raises(ValueError, match=r"k must be >= 0"):
        bank.sample(-1)


def test_sample_is_reproducible_with_a_seeded_generator():
    bank = labelled_bank()
    draw = lambda seed: bank.sample(5, torch.tensor([0]), torch.Generator().manual_seed(seed))[2]
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_sampled_rows_are_copies():
    bank = labelled_bank()
    feats, _, idx = bank.sample(3)
    before = bank.feats[idx].clone()
    feats.zero_()
    assert torch.equal(bank.feats[idx], before)


IDX = torch.tensor([0, 1])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda b: b.update(IDX, torch.ones(3, 4)), r"feats must have shape \(2, 4\), got \(3, 4\)"),
        (lambda b: b.update(IDX, torch.ones(2, 5)), r"feats must have shape \(2, 4\), got \(2, 5\)"),
        (lambda b: b.update(IDX, torch.ones(2, 4), torch.tensor([1])), r"labels must have shape \(2\)"),
        (lambda b: b.update(torch.tensor([0, 20]), torch.ones(2, 4)), r"indices must lie in \[0, 20\)"),
        (lambda b: b.update(torch.tensor([-1]), torch.ones(1, 4)), r"indices must lie in \[0, 20\)"),
        (lambda b: b.update(torch.tensor([0.0]), torch.ones(1, 4)), r"indices must hold integer slot"),
        (lambda b: b.sample(2, exclude=torch.tensor([25])), r"exclude must lie in \[0, 20\)"),
    ],
)
def test_bank_bad_input_raises_value_error(call, match):
    bank = labelled_bank()
    state = {k: v.clone() for k, v in bank.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        call(bank)
    assert all(torch.equal(v, state[k]) for k, v in bank.state_dict().items())  # nothing written


@pytest.mark.parametrize("momentum", [-0.1, 1.0])
def test_bank_momentum_out_of_range_raises(momentum):
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\)"):
        MomentumMemoryBank(4, 2, momentum=momentum)


def test_bank_state_dict_round_trip():
    bank = labelled_bank()
    bank.update(torch.tensor([2, 7]), torch.randn(2, 4), torch.tensor([1, 0]))
    buffer = io.BytesIO()
    torch.save(bank.state_dict(), buffer)
    buffer.seek(0)

    restored = MomentumMemoryBank(20, 4, seed=99)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.feats, bank.feats)
    assert torch.equal(restored.labels, bank.labels)


# ---- FIFOQueue ---------------------------------------------------------------------------------


def test_queue_starts_with_unit_keys_unknown_labels_and_zero_pointer():
    queue = FIFOQueue(8, 3, batch_size=2)
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(8))
    assert queue.labels.tolist() == [-1] * 8
    assert queue.ptr.tolist() == [0]


def test_queue_overwrites_oldest_batch_and_wraps_around():
    queue = FIFOQueue(6, 2)
    batches = [torch.full((2, 2), float(b)) for b in range(1, 5)]  # batch b holds the value b
    for b, keys in enumerate(batches[:3], start=1):
        queue.enqueue(keys, torch.tensor([10 * b, 10 * b + 1]))
    assert queue.keys[:, 0].tolist() == [1, 1, 2, 2, 3, 3]
    assert queue.labels.tolist() == [10, 11, 20, 21, 30, 31]
    assert queue.ptr.tolist() == [0]  # full circle

    queue.enqueue(batches[3])  # overwrites batch 1, labels unknown
    assert queue.keys[:, 0].tolist() == [4, 4, 2, 2, 3, 3]
    assert queue.labels.tolist() == [-1, -1, 20, 21, 30, 31]
    assert queue.ptr.tolist() == [2]


def test_queue_size_not_divisible_raises_at_construction_and_enqueue():
    message = (
        r"FIFOQueue size 1000 is not divisible by the batch size 128: "
        r"choose a size that is a multiple of 128 \(e.g. 1024\)"
    )
    with pytest.raises(ValueError, match=message):
        FIFOQueue(1000, 4, batch_size=128)
    queue = FIFOQueue(1000, 4)
    with pytest.raises(ValueError, match=message):
        queue.enqueue(torch.randn(128, 4))
    assert queue.ptr.tolist() == [0]


@pytest.mark.parametrize(
    "keys, labels, match",
    [
        (torch.randn(2, 5), None, r"keys must have shape \(\*, 4\), got \(2, 5\)"),
        (torch.randn(2, 4), torch.tensor([1, 2, 3]), r"labels must have shape \(2\)"),
        (torch.randn(0, 4), None, r"batch size must be >= 1"),
    ],
)
def test_queue_bad_input_raises_value_error(keys, labels, match):
    with pytest.raises(ValueError, match=match):
        FIFOQueue(8, 4).enqueue(keys, labels)


def test_queue_state_dict_round_trip_continues_identically():
    queue = FIFOQueue(6, 2)
    queue.enqueue(torch.randn(2, 2), torch.tensor([1, 2]))
    buffer = io.BytesIO()
    torch.save(queue.state_dict(), buffer)
    buffer.seek(0)

    restored = FIFOQueue(6, 2, seed=99)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for name in ("keys", "labels", "ptr"):
        assert torch.equal(getattr(restored, name), getattr(queue, name))
    nxt = torch.randn(2, 2)
    queue.enqueue(nxt)
    restored.enqueue(nxt)
    assert torch.equal(restored.keys, queue.keys) and torch.equal(restored.ptr, queue.ptr)
