"""The any-to-any model on hand-packed batches (schemas/batch.py): outputs, the decoder's attention rule, padding,
missing modalities, overfitting one batch and activation checkpointing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.model import build_model
from schemas.batch import ModalitySpec, ModalityTable
from schemas.modalities import Family
from schemas.model import ModelConfig

# Registry modalities with small vocabularies, so the tiny model trains in seconds on CPU.
TABLE = ModalityTable.of([
    ModalitySpec("rgb", Family.IMAGE_LIKE, 64, 16, (4, 4)),
    ModalitySpec("depth", Family.IMAGE_LIKE, 48, 16, (4, 4)),
    ModalitySpec("caption", Family.SEQUENCE, 40, 12),
])
TINY = ModelConfig(size="tiny")
SOS = 1  # what the sequence's first target slot is fed (any id of the vocabulary would do here)


def pack(layouts: list[dict[str, tuple[list[int], list[int]]]], input_slots: int, target_slots: int,
         seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch by hand: per sample {modality: (input positions, target positions)}, tokens drawn at random.

    Parallel targets are fed 0 (the model uses its mask embedding); a sequence's target run is fed shifted right
    behind SOS, its positions being the index in the run, as the contract says. The rest of each row is padding.
    """
    rng = np.random.default_rng(seed)
    shape_in, shape_out = (len(layouts), input_slots), (len(layouts), target_slots)
    batch = {"enc_tokens": np.zeros(shape_in, np.int64), "enc_modality": np.zeros(shape_in, np.int64),
             "enc_position": np.zeros(shape_in, np.int64), "enc_pad": np.ones(shape_in, bool),
             "dec_input": np.zeros(shape_out, np.int64), "dec_target": np.zeros(shape_out, np.int64),
             "dec_modality": np.zeros(shape_out, np.int64), "dec_position": np.zeros(shape_out, np.int64),
             "dec_causal": np.zeros(shape_out, bool), "dec_pad": np.ones(shape_out, bool)}
    for row, layout in enumerate(layouts):
        e = d = 0
        for name, (inputs, targets) in layout.items():
            spec, index = TABLE[name], TABLE.index(name)
            n, m = len(inputs), len(targets)
            batch["enc_tokens"][row, e:e + n] = rng.integers(0, spec.vocab_size, n)
            batch["enc_modality"][row, e:e + n] = index
            batch["enc_position"][row, e:e + n] = inputs
            batch["enc_pad"][row, e:e + n] = False
            target = rng.integers(2, spec.vocab_size, m)
            batch["dec_target"][row, d:d + m] = target
            batch["dec_modality"][row, d:d + m] = index
            batch["dec_position"][row, d:d + m] = targets
            batch["dec_pad"][row, d:d + m] = False
            if spec.autoregressive:
                batch["dec_causal"][row, d:d + m] = True
                batch["dec_input"][row, d:d + m] = np.concatenate([[SOS], target[:-1]])
            e, d = e + n, d + m
    return {name: torch.from_numpy(array) for name, array in batch.items()}


# Sample 0 has all three modalities and fills its target slots; sample 1 lacks depth and pads both sides.
LAYOUTS = [
    {"rgb": ([0, 3, 5, 9, 14], [1, 2, 7, 8, 12]), "depth": ([2, 4, 11], [0, 6, 10, 15]),
     "caption": ([0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6])},
    {"rgb": ([1, 2, 3], [0, 4, 5, 6, 7, 13]), "caption": ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4])},
]
INPUT_SLOTS, TARGET_SLOTS = 12, 16


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs on one torch thread (conftest.py says why)."""


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_model(TINY, TABLE).eval()


def test_outputs_are_the_mean_of_per_modality_cross_entropies(model):
    data = pack(LAYOUTS, INPUT_SLOTS, TARGET_SLOTS)
    with torch.no_grad():
        out = model(data, return_logits=True)
        features, pad = model.encode(data)
    assert features.shape == (2, INPUT_SLOTS, 64) and torch.equal(pad, data["enc_pad"])
    assert set(out.losses) == {"rgb", "depth", "caption"}
    live = ~data["dec_pad"]
    for name, logits in out.logits.items():
        # Each modality's loss is the plain mean cross-entropy over its live target slots, batch-wide.
        slots = live & (data["dec_modality"] == TABLE.index(name))
        assert logits.shape == (int(slots.sum()), TABLE[name].vocab_size)
        torch.testing.assert_close(out.losses[name], F.cross_entropy(logits, data["dec_target"][slots]))
    torch.testing.assert_close(out.loss, torch.stack(list(out.losses.values())).mean())


def _decoded(model, data):
    with torch.no_grad():
        return model.decode(data, *model.encode(data))


def _perturbed(data, row, slots, **fields):
    changed = {k: v.clone() for k, v in data.items()}
    for name, values in fields.items():
        changed[name][row, slots] = torch.as_tensor(values)
    return changed


def test_decoder_slots_see_only_their_own_modality(model):
    data = pack(LAYOUTS, INPUT_SLOTS, TARGET_SLOTS)
    before = _decoded(model, data)
    modality = data["dec_modality"][0]
    rgb, depth, caption = ((modality == TABLE.index(n)) & ~data["dec_pad"][0] for n in ("rgb", "depth", "caption"))
    # Move one rgb query to an unused grid cell: every other rgb slot may notice, depth and caption may not.
    first_rgb = int(rgb.nonzero()[0])
    after = _decoded(model, _perturbed(data, 0, first_rgb, dec_position=13))
    others = rgb.clone()
    others[first_rgb] = False
    assert all(not torch.allclose(after[0, s], before[0, s]) for s in others.nonzero().flatten())
    torch.testing.assert_close(after[0, depth | caption], before[0, depth | caption])
    # Change every caption input token: the caption slots change, the parallel ones do not.
    n = int(caption.sum())
    after = _decoded(model, _perturbed(data, 0, caption, dec_input=torch.full((n,), 30)))
    assert not torch.allclose(after[0, caption], before[0, caption])
    torch.testing.assert_close(after[0, rgb | depth], before[0, rgb | depth])
    # Parallel queries ignore dec_input entirely (they are the mask embedding).
    after = _decoded(model, _perturbed(data, 0, rgb, dec_input=torch.full((int(rgb.sum()),), 17)))
    torch.testing.assert_close(after, before)
    # The other sample is untouched by all of this.
    torch.testing.assert_close(after[1], before[1])


def test_causal_slots_never_see_later_positions(model):
    data = pack(LAYOUTS, INPUT_SLOTS, TARGET_SLOTS)
    before = _decoded(model, data)
    caption = (data["dec_modality"][0] == TABLE.index("caption")) & ~data["dec_pad"][0]
    slots = caption.nonzero().flatten()
    for k in (2, 5):  # feed a different token at run position k
        slot = int(slots[k])
        after = _decoded(model, _perturbed(data, 0, slot, dec_input=(data["dec_input"][0, slot] + 7) % 40))
        earlier, later = slots[:k], slots[k:]
        torch.testing.assert_close(after[0, earlier], before[0, earlier])
        assert all(not torch.allclose(after[0, s], before[0, s]) for s in later)


def test_padding_slots_change_nothing(model):
    data = pack(LAYOUTS, INPUT_SLOTS, TARGET_SLOTS)
    scrambled = {k: v.clone() for k, v in data.items()}
    enc_pad, dec_pad = data["enc_pad"], data["dec_pad"]
    assert enc_pad.any() and dec_pad.any()
    for name in ("enc_tokens", "dec_input", "dec_target"):
        scrambled[name][enc_pad if name.startswith("enc") else dec_pad] = 11
    scrambled["enc_modality"][enc_pad] = 2
    scrambled["dec_modality"][dec_pad] = 1  # padding posing as depth in the sample that lacks depth
    scrambled["dec_position"][dec_pad] = 3
    scrambled["dec_causal"][dec_pad] = True
    with torch.no_grad():
        out, out_scrambled = model(data), model(scrambled)
        wider = model(pack(LAYOUTS, INPUT_SLOTS + 5, TARGET_SLOTS + 7))  # more padding slots, same tokens
    torch.testing.assert_close(out_scrambled.loss, out.loss)
    torch.testing.assert_close(wider.loss, out.loss)
    assert set(out_scrambled.losses) == set(out.losses)


def test_absent_modality_has_no_loss_but_its_head_still_gets_a_gradient(model):
    data = pack([{"rgb": ([0, 1], [2, 3, 4])}], 4, 4)
    out = model(data)
    assert set(out.losses) == {"rgb"}
    out.loss.backward()
    heads = dict(zip(TABLE.names, model.heads))
    # Zero, not None: data-parallel ranks with other modalities reduce the same set of gradients.
    assert heads["rgb"].weight.grad.abs().sum() > 0
    for name in ("depth", "caption"):
        assert heads[name].weight.grad is not None and not heads[name].weight.grad.any()


def test_positions_past_a_sequences_bound_reuse_its_last_position(model):
    data = pack([{"caption": ([0], [0, 1])}], 2, 2)
    far = {k: v.clone() for k, v in data.items()}
    data["enc_position"][0, 0], far["enc_position"][0, 0] = 11, 40  # caption holds 12 positions
    with torch.no_grad():
        torch.testing.assert_close(model.encode(far)[0], model.encode(data)[0])


def test_a_batch_breaking_the_contract_is_refused_by_name(model):
    data = pack([{"rgb": ([0], [1])}], 2, 2)
    with pytest.raises(KeyError, match="dec_pad"):
        model({k: v for k, v in data.items() if k != "dec_pad"})
    with pytest.raises(ValueError, match="dec_position"):
        model({**data, "dec_position": data["dec_position"][:, :1]})


def test_tiny_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model(TINY, TABLE).train()
    data = pack(LAYOUTS, INPUT_SLOTS, TARGET_SLOTS, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = model(data).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Starts near log(vocab) (random guessing), ends memorised.
    assert losses[0] > 3.0 and losses[-1] < 0.1


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    data = pack(LAYOUTS, INPUT_SLOTS, TARGET_SLOTS)
    results = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig(size="tiny", activation_checkpointing=flag), TABLE).train()
        loss = model(data).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name])
