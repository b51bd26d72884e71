"""Union-find (disjoint sets) for grouping by transitive links.

Why here: grouping "A~B, B~C ⇒ one group" is the other half of neighbour work
(photo sets link images by hash, embedding and MobileNet, then take connected
components), and one implementation with one rule keeps every grouping alike:
the smallest index is always a set's root, so components come out ordered by
their first member, each sorted.
"""

from __future__ import annotations


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]  # path halving
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # smallest index is the root

    def components(self) -> list[list[int]]:
        """Every set, singletons included, each sorted, ordered by its first member."""
        groups: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            groups.setdefault(self.find(i), []).append(i)
        return list(groups.values())
