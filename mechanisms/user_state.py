"""The per-user store of the memoizing (longitudinal) LDP protocols: :class:`UserState`.

One table per protocol instance, keyed by client id: the users seen, their public randomness, their
memoized permanent responses and the ledger of budget spent. Unary-encoded memos are stored 8 bits
per byte (:func:`pack_bits`). The protocols themselves live in :mod:`privfl.mechanisms.longitudinal`
and :mod:`privfl.mechanisms.loloha`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["UserState", "pack_bits", "unpack_bits"]


# --------------------------------------------------------------------------------------------
# Bit packing (memoized unary-encoded responses are stored 8 per byte)
# --------------------------------------------------------------------------------------------
def pack_bits(bits: Tensor) -> Tensor:
    """``[n, w]`` 0/1 (bool or integer) → ``[n, ceil(w/8)]`` uint8, bit ``j`` at byte ``j//8``, bit ``j%8``."""
    n, w = bits.shape
    pad = (-w) % 8
    b = bits.to(torch.uint8)
    if pad:
        b = torch.cat([b, b.new_zeros(n, pad)], dim=1)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=bits.device)
    return (b.view(n, -1, 8) * weights).sum(dim=2, dtype=torch.uint8)


def unpack_bits(packed: Tensor, w: int) -> Tensor:
    """Inverse of :func:`pack_bits`: ``[n, ceil(w/8)]`` uint8 → ``[n, w]`` bool."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed[:, :, None] >> shifts) & 1
    return bits.reshape(packed.shape[0], -1)[:, :w].bool()


# --------------------------------------------------------------------------------------------
# Per-user state
# --------------------------------------------------------------------------------------------
class UserState:
    """Per-user state of a memoizing protocol, keyed by client id.

    - ``ids`` ``[m]`` int64, sorted and distinct: the users seen so far;
    - ``public`` ``[m, c]`` int64: randomness each user draws once and sends with its reports
      (LOLOHA's hash seed ``(a, b)``, dBitFlipPM's sampled buckets; ``c = 0`` for the others);
    - ``memo_count`` ``[m]`` int64: permanent responses drawn for the user — the ledger
      (spent budget = ``memo_count · eps_inf``; equal to the number of distinct memoized values);
    - ``ledgered`` ``[m]`` int64: how many of them were already recorded in a
      :class:`~privfl.accounting.PrivacyLedger` by :meth:`LongitudinalOracle.account`;
    - the memo table, ``slots`` entries per user (the memo key: the value, the hashed value or the
      pattern), either *dense* (``memo_dense [m, slots]``, scalar payloads, −1 = not memoized; used
      when ``slots`` is small) or *sparse* (``memo_keys [E]`` sorted keys ``id · slots + slot`` and
      ``memo_values [E, ...]`` payloads, memory proportional to what users actually memoized).

    :meth:`to_dict` / :meth:`from_dict` give a plain mapping of tensors (``torch.save``-able).
    """

    def __init__(self, *, slots: int, public_width: int, payload_shape: tuple[int, ...], payload_dtype: torch.dtype,
                 dense: bool, device: torch.device | str = "cpu"):
        self.slots = int(slots)
        self.public_width = int(public_width)
        self.payload_shape = tuple(payload_shape)
        self.payload_dtype = payload_dtype
        self.dense = bool(dense)
        if self.dense and self.payload_shape:
            raise ValueError("a dense memo stores scalar payloads only")
        device = torch.device(device)
        self.ids = torch.empty(0, dtype=torch.int64, device=device)
        self.public = torch.empty(0, self.public_width, dtype=torch.int64, device=device)
        self.memo_count = torch.empty(0, dtype=torch.int64, device=device)
        self.ledgered = torch.empty(0, dtype=torch.int64, device=device)
        self.memo_dense = torch.empty(0, self.slots, dtype=payload_dtype, device=device) if self.dense else None
        self.memo_keys = torch.empty(0, dtype=torch.int64, device=device)
        self.memo_values = torch.empty(0, *self.payload_shape, dtype=payload_dtype, device=device)

    # -- basics -----------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        return int(self.ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def to(self, device: torch.device) -> UserState:
        if torch.device(device) != self.device:
            for name in ("ids", "public", "memo_count", "ledgered", "memo_keys", "memo_values"):
                setattr(self, name, getattr(self, name).to(device))
            if self.memo_dense is not None:
                self.memo_dense = self.memo_dense.to(device)
        return self

    def rows(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Row of each id in the per-user arrays, and whether the id is known."""
        m = self.num_users
        if m == 0:
            return torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        if int(self.ids[-1]) == m - 1:  # sorted distinct non-negative ids ending at m-1: exactly 0..m-1
            present = ids < m
            return torch.where(present, ids, torch.zeros_like(ids)), present
        pos = torch.searchsorted(self.ids, ids).clamp_(max=m - 1)
        return pos, self.ids[pos] == ids

    def join(self, new_ids: Tensor, public: Tensor) -> None:
        """Add users (distinct, not yet present) with their public randomness; keeps ``ids`` sorted."""
        if new_ids.numel() == 0:
            return
        ids = torch.cat([self.ids, new_ids])
        order = torch.argsort(ids)
        self.ids = ids[order]
        self.public = torch.cat([self.public, public.to(torch.int64)])[order]
        self.memo_count = torch.cat([self.memo_count, torch.zeros_like(new_ids)])[order]
        self.ledgered = torch.cat([self.ledgered, torch.zeros_like(new_ids)])[order]
        if self.memo_dense is not None:
            fresh = torch.full((new_ids.shape[0], self.slots), -1, dtype=self.memo_dense.dtype, device=self.device)
            self.memo_dense = torch.cat([self.memo_dense, fresh])[order]

    # -- the memo table ---------------------------------------------------------------------
    def lookup(self, rows: Tensor, ids: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """``(found [n] bool, payload [n, ...])`` — payload rows are meaningless where not found."""
        if self.memo_dense is not None:
            payload = self.memo_dense[rows, slots]
            return payload >= 0, payload.clone()
        keys = ids * self.slots + slots
        e = self.memo_keys.shape[0]
        if e == 0:
            empty = torch.zeros(ids.shape[0], *self.payload_shape, dtype=self.payload_dtype, device=ids.device)
            return torch.zeros_like(ids, dtype=torch.bool), empty
        pos = torch.searchsorted(self.memo_keys, keys).clamp_(max=e - 1)
        return self.memo_keys[pos] == keys, self.memo_values[pos].clone()

    def store(self, rows: Tensor, ids: Tensor, slots: Tensor, payload: Tensor) -> None:
        """Memoize new (user, slot) entries (distinct users, none memoized yet) and count them."""
        if rows.numel() == 0:
            return
        if self.memo_dense is not None:
            self.memo_dense[rows, slots] = payload.to(self.memo_dense.dtype)
        else:
            keys = torch.cat([self.memo_keys, ids * self.slots + slots])
            order = torch.argsort(keys)
            self.memo_keys = keys[order]
            self.memo_values = torch.cat([self.memo_values, payload.to(self.payload_dtype)])[order]
        self.memo_count[rows] += 1

    def memoized_per_user(self) -> Tensor:
        """``[m]`` number of memo entries each user holds (recomputed from the table itself)."""
        if self.memo_dense is not None:
            return (self.memo_dense >= 0).sum(dim=1)
        owners = torch.div(self.memo_keys, self.slots, rounding_mode="floor")
        rows, _ = self.rows(owners)
        return torch.bincount(rows, minlength=self.num_users)

    def memo_slots(self, client_id: int) -> Tensor:
        """The slots (memo keys) memoized for one user, sorted."""
        rows, present = self.rows(torch.tensor([client_id], device=self.device))
        if not bool(present[0]):
            return torch.empty(0, dtype=torch.int64, device=self.device)
        if self.memo_dense is not None:
            return torch.nonzero(self.memo_dense[rows[0]] >= 0).flatten()
        owners = torch.div(self.memo_keys, self.slots, rounding_mode="floor")
        return self.memo_keys[owners == client_id] - client_id * self.slots

    # -- serialisation, leave / resume ------------------------------------------------------
    def to_dict(self, ids: Tensor | None = None) -> dict[str, Any]:
        """Plain mapping of tensors for all users, or only ``ids`` (which must all be known)."""
        if ids is None:
            sel = torch.ones(self.num_users, dtype=torch.bool, device=self.device)
        else:
            rows, present = self.rows(ids)
            if not bool(present.all()):
                raise ValueError(f"unknown client ids: {ids[~present][:10].tolist()}")
            sel = torch.zeros(self.num_users, dtype=torch.bool, device=self.device)
            sel[rows] = True
        out: dict[str, Any] = {
            "slots": self.slots, "public_width": self.public_width, "payload_shape": list(self.payload_shape),
            "payload_dtype": str(self.payload_dtype).replace("torch.", ""), "dense": self.dense,
            "ids": self.ids[sel].clone(), "public": self.public[sel].clone(),
            "memo_count": self.memo_count[sel].clone(), "ledgered": self.ledgered[sel].clone(),
        }
        if self.memo_dense is not None:
            out["memo_dense"] = self.memo_dense[sel].clone()
        else:
            owners = torch.div(self.memo_keys, self.slots, rounding_mode="floor")
            keep = torch.isin(owners, out["ids"])
            out["memo_keys"] = self.memo_keys[keep].clone()
            out["memo_values"] = self.memo_values[keep].clone()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserState:
        if not isinstance(data, dict):
            raise TypeError(f"state must be a mapping from UserState.to_dict, got {type(data).__name__}")
        required = {"slots", "public_width", "payload_shape", "payload_dtype", "dense", "ids", "public", "memo_count"}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"state is missing key(s) {', '.join(missing)}")
        dtype = getattr(torch, str(data["payload_dtype"]))
        state = cls(slots=data["slots"], public_width=data["public_width"], payload_shape=tuple(data["payload_shape"]),
                    payload_dtype=dtype, dense=data["dense"], device=torch.as_tensor(data["ids"]).device)
        ids = torch.as_tensor(data["ids"], dtype=torch.int64)
        m = ids.shape[0]
        if m and (not bool((ids[1:] > ids[:-1]).all()) or int(ids[0]) < 0):
            raise ValueError("state ids must be sorted, distinct and >= 0")
        public = torch.as_tensor(data["public"], dtype=torch.int64).reshape(m, state.public_width)
        count = torch.as_tensor(data["memo_count"], dtype=torch.int64)
        if count.shape != (m,):
            raise ValueError(f"state memo_count must have shape [{m}], got {tuple(count.shape)}")
        ledgered = torch.as_tensor(data.get("ledgered", torch.zeros_like(count)), dtype=torch.int64)
        if ledgered.shape != (m,) or bool((ledgered > count).any()):
            raise ValueError(f"state ledgered must have shape [{m}] and never exceed memo_count")
        state.ids, state.public, state.memo_count = ids.clone(), public.clone(), count.clone()
        state.ledgered = ledgered.clone()
        if state.dense:
            memo = torch.as_tensor(data["memo_dense"]).to(dtype)
            if memo.shape != (m, state.slots):
                raise ValueError(f"state memo_dense must have shape [{m}, {state.slots}], got {tuple(memo.shape)}")
            state.memo_dense = memo.clone()
        else:
            keys = torch.as_tensor(data["memo_keys"], dtype=torch.int64)
            vals = torch.as_tensor(data["memo_values"]).to(dtype)
            if vals.shape != (keys.shape[0], *state.payload_shape):
                raise ValueError(f"state memo_values must have shape [{keys.shape[0]}, {state.payload_shape}], "
                                 f"got {tuple(vals.shape)}")
            order = torch.argsort(keys)
            state.memo_keys, state.memo_values = keys[order].clone(), vals[order].clone()
        return state

    def remove(self, ids: Tensor) -> None:
        rows, present = self.rows(ids)
        if not bool(present.all()):
            raise ValueError(f"unknown client ids: {ids[~present][:10].tolist()}")
        keep = torch.ones(self.num_users, dtype=torch.bool, device=self.device)
        keep[rows] = False
        self.ids, self.public, self.memo_count = self.ids[keep], self.public[keep], self.memo_count[keep]
        self.ledgered = self.ledgered[keep]
        if self.memo_dense is not None:
            self.memo_dense = self.memo_dense[keep]
        else:
            owners = torch.div(self.memo_keys, self.slots, rounding_mode="floor")
            stay = ~torch.isin(owners, ids)
            self.memo_keys, self.memo_values = self.memo_keys[stay], self.memo_values[stay]

    def merge(self, other: UserState) -> None:
        """Add ``other``'s users (none may be present already)."""
        for attr in ("slots", "public_width", "payload_shape", "payload_dtype", "dense"):
            if getattr(other, attr) != getattr(self, attr):
                raise ValueError(f"incompatible user state: {attr} is {getattr(other, attr)!r}, "
                                 f"this protocol needs {getattr(self, attr)!r}")
        other = other.to(self.device)
        _, present = self.rows(other.ids)
        if bool(present.any()):
            raise ValueError(f"client ids already present: {other.ids[present][:10].tolist()}")
        self.join(other.ids, other.public)  # new rows start with no memo and a zero count
        rows, _ = self.rows(other.ids)
        self.memo_count[rows] = other.memo_count
        self.ledgered[rows] = other.ledgered
        if self.memo_dense is not None:
            self.memo_dense[rows] = other.memo_dense.to(self.memo_dense.dtype)
        else:
            keys = torch.cat([self.memo_keys, other.memo_keys])
            order = torch.argsort(keys)
            self.memo_keys = keys[order]
            self.memo_values = torch.cat([self.memo_values, other.memo_values])[order]
