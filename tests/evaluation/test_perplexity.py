"""Sliding windows score every token exactly once, with bounded context."""

from __future__ import annotations

import math

import pytest

from quantmill.evaluation.perplexity import perplexity, windows_for

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("length", "max_length", "stride"), [(5, 8, 4), (20, 8, 4), (20, 8, 7), (33, 16, 16), (1, 4, 2)]
)
def test_windows_cover_each_token_once(length, max_length, stride):
    ids = list(range(100, 100 + length))
    windows = windows_for(ids, bos=1, max_length=max_length, stride=stride)
    scored = [token for window, n in windows for token in window[len(window) - n :]]
    assert scored == ids
    assert all(len(window) <= max_length for window, _ in windows)
    assert windows[0][0][0] == 1  # the first window starts with the prefix token


def test_uniform_model_has_vocabulary_perplexity():
    vocab = 50

    def uniform(windows):
        return [n * math.log(1 / vocab) for _, n in windows]

    result = perplexity(["a b c", "d e"], lambda text: [ord(c) for c in text.replace(" ", "")], 0, uniform, 4, 2)
    assert result.ppl == pytest.approx(vocab)
    assert result.tokens == 5 and result.words == 5 and result.bytes == 8
    assert result.word_perplexity == pytest.approx(vocab)
