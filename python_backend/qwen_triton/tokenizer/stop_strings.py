"""Stop strings found in text that arrives a piece at a time, in time linear in the text.

The detokenizer needs two answers after every step: did a stop string just complete, and how long is the
tail of the text that could still grow into one (that tail is held back from the client). Asking
`text.endswith(stop[:n])` for every n costs O(len(stop)^2) a step, on the engine thread. Here each stop
string is a Knuth-Morris-Pratt automaton instead: its state is the length of the longest prefix of the
stop string that the text currently ends with, and each new character moves it in amortized O(1). So a
step costs O(new characters x stop strings), and the held-back length is the largest state, read for free.
"""

from __future__ import annotations


def _prefix_function(pattern: str) -> list[int]:
    """fallback[k]: length of the longest proper prefix of pattern[: k + 1] that is also its suffix."""
    fallback = [0] * len(pattern)
    matched = 0
    for k in range(1, len(pattern)):
        while matched and pattern[k] != pattern[matched]:
            matched = fallback[matched - 1]
        if pattern[k] == pattern[matched]:
            matched += 1
        fallback[k] = matched
    return fallback


class StopStringMatcher:
    """Feed text in order; `feed` reports where the first stop string to complete starts (of several
    completing on the same character, the longest, which starts first)."""

    def __init__(self, stops: list[str]):
        self._stops = [stop for stop in stops if stop]
        self._fallbacks = [_prefix_function(stop) for stop in self._stops]
        self._states = [0] * len(self._stops)
        self._fed = 0  # characters fed so far

    def feed(self, text: str) -> int | None:
        """Advance over `text`. Returns the offset (in everything fed so far) at which the first stop string
        to complete begins, or None. After a match the matcher is done: feed no more."""
        if not self._stops:
            self._fed += len(text)
            return None
        for index, char in enumerate(text):
            longest_completed = 0  # stops completing on the same character: the longest starts first
            for i, stop in enumerate(self._stops):
                state = self._states[i]
                while state and stop[state] != char:
                    state = self._fallbacks[i][state - 1]
                if stop[state] == char:
                    state += 1
                if state == len(stop):
                    longest_completed = max(longest_completed, state)
                    state = self._fallbacks[i][state - 1]
                self._states[i] = state
            if longest_completed:
                return self._fed + index + 1 - longest_completed
        self._fed += len(text)
        return None

    def held_back(self) -> int:
        """Characters at the end of the text fed so far that are a proper prefix of some stop string."""
        return max(self._states, default=0)
