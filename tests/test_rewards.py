"""Toy rewards on cases worked by hand (SPEC §4). Symbols 0..9, EOS = 10, UNK = 11."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlbias_jax.rl.rewards import batch_reward, ordered_digits_reward, threshold_reward

EOS, UNK = 10, 11


def _score(tokens, label, mask=None, fn=ordered_digits_reward):
    tokens = jnp.asarray(tokens, jnp.int32)
    mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask, bool)
    return float(fn(tokens, mask, jnp.int32(label), 10))


@pytest.mark.parametrize("tokens, label, expected", [
    ([1, 2, 3, 4, 5], 1, 1.0),          # perfectly ascending
    ([9, 7, 5, 3, 0], 0, 1.0),          # perfectly descending
    ([1, 2, 3, 4, 5], 0, 0.0),          # ascending but descending wanted: first pair already wrong
    ([1, 2, 2, 4, 5], 1, 0.25),         # equal neighbours break strictness after one good pair
    ([3, 3, 4, 5, 6], 1, 0.0),          # first pair equal
    ([1, 5, 3, 4, 5], 1, 0.25),         # counting stops at the first violation
    ([UNK, UNK, UNK, UNK, UNK], 1, 0.0),  # no digits
    ([UNK, 1, UNK, 2, 3], 1, 0.5),      # non-digits are skipped: digits 1,2,3 -> 2 pairs
    ([7, UNK, 5, UNK, 1], 0, 0.5),      # descending through UNKs
    ([4, UNK, UNK, UNK, UNK], 1, 0.0),  # a single digit has no pairs
])
def test_ordered_digits_by_hand(tokens, label, expected):
    assert _score(tokens, label) == pytest.approx(expected)


def test_early_eos_masks_the_rest():
    # the sampler masks everything after EOS; the masked digits must not count
    tokens = [1, 2, EOS, 3, 4]
    mask = [True, True, True, False, False]
    assert _score(tokens, 1, mask) == pytest.approx(0.25)
    assert _score([EOS, 1, 2, 3, 4], 1, [True, False, False, False, False]) == 0.0


def test_threshold_reward_by_hand():
    assert _score([7, 0, 0, 0, 0], 1, fn=threshold_reward) == 1.0   # upper half, label 1
    assert _score([7, 0, 0, 0, 0], 0, fn=threshold_reward) == 0.0
    assert _score([2, 9, 9, 9, 9], 0, fn=threshold_reward) == 1.0   # lower half, label 0
    assert _score([5, 0, 0, 0, 0], 1, fn=threshold_reward) == 1.0   # 5 is the first upper symbol of 0..9
    assert _score([4, 0, 0, 0, 0], 1, fn=threshold_reward) == 0.0
    assert _score([UNK, 9, 9, 9, 9], 1, fn=threshold_reward) == 0.0  # not a digit
    assert _score([EOS, 9, 9, 9, 9], 0, [True, False, False, False, False], fn=threshold_reward) == 0.0


def test_batch_reward_matches_python_reference():
    rng = np.random.default_rng(0)
    responses = rng.integers(0, 12, size=(200, 5))
    labels = rng.integers(0, 2, size=200)
    masks = np.ones_like(responses, bool)
    got = np.asarray(jax.jit(batch_reward, static_argnums=(0, 4))("ascending", jnp.asarray(responses), jnp.asarray(masks), jnp.asarray(labels), 10))

    def reference(row, label):
        digits = [t for t in row if t < 10]
        count = 0
        for a, b in zip(digits, digits[1:]):
            if (b > a) if label == 1 else (b < a):
                count += 1
            else:
                break
        return count / 4

    expected = np.array([reference(row, label) for row, label in zip(responses, labels)])
    np.testing.assert_array_equal(got, expected)
