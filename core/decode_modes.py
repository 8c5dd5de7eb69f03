"""How generation runs the model in each sampling mode: the prefill and decode-step forwards, per mode.

- default: the model as loaded (fp32), eager, KV cache sliced to the positions written so far. On CPU it
  runs as core.cpu_decode lays it out: the same weights and products, the head transposed (one fp32 copy
  of it), each one-row product split over the threads.
- compiled: one decode step of fixed shapes, compiled once (gpt-fast's approach): the cache has a fixed
  length, the position is a tensor, and attention reads the whole cache through a mask built from it.
  torch.compile "reduce-overhead" (CUDA graphs) on GPU, default inductor on CPU (on the default mode's
  CPU layout). If compiling fails, one warning line and the same step runs uncompiled.
- bf16: a bf16 copy of the weights; activations and the KV cache in bf16 too.
- int8: a copy with int8 projection and head weights (core.quant); the rest stays fp32.
- int8-compiled: both: the int8 copy's decode step, compiled.

Converted copies (the CPU layout's head included) and compiled steps are built on first use and kept per
model (dropped with it), and rebuilt if the model's weights change in place.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from core.cpu_decode import cpu_decode_copy
from core.model import GPT, CausalSelfAttention, KVCache
from core.parallel import is_sharded
from core.quant import bf16_copy, int8_copy
from core.sampling_config import MODES as MODES  # torch-free; re-exported: callers may import it from here
from core.sampling_config import check_mode

MIN_STATIC_LEN = 64  # compiled mode: cache lengths are powers of two from here, so few shapes get compiled

log = logging.getLogger(__name__)


def prefill(model: GPT, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
    """Next-token logits (B, V) after reading tokens (B, T) from position 0; their keys/values go into cache."""
    return model(tokens, cache=cache, last_only=True).logits[:, -1]


def decode_step(model: GPT, tokens: torch.Tensor, pos: int, cache: KVCache) -> torch.Tensor:
    """Next-token logits (B, V) after one more token per row, tokens (B,), at absolute position pos;
    positions 0 .. pos - 1 are read from cache."""
    return model(tokens[:, None], pos=pos, cache=cache).logits[:, -1]


# --- compiled: a static-shape decode step --------------------------------------------------------
def _static_attention(
    attn: CausalSelfAttention,
    x: torch.Tensor,
    pos: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    visible: torch.Tensor,
) -> torch.Tensor:
    """CausalSelfAttention for one token, with the whole (B, H, S, D) cache and a mask instead of a slice."""
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split(attn.n_embd, dim=2)
    q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v))
    k_buf[:, :, pos] = k
    v_buf[:, :, pos] = v
    y = F.scaled_dot_product_attention(q, k_buf, v_buf, attn_mask=visible)
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, C))


def _static_step(
    model: GPT, idx: torch.Tensor, pos: torch.Tensor, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor]
) -> torch.Tensor:
    """decode_step with shapes that do not depend on pos: idx (B, 1), pos (1,) long, k/v one (B, H, S, D)
    tensor per layer. Separate tensors, not one indexed inside: inductor then writes the new keys in place,
    where selecting a layer of one (L, B, H, S, D) input made it copy the whole cache every step."""
    t = model.transformer
    x = t.wte(idx) + t.wpe(pos)
    visible = (torch.arange(k[0].size(2), device=idx.device) <= pos)[None]  # (1, S): keys so far, this one too
    for i, block in enumerate(t.h):
        x = x + _static_attention(block.attn, block.ln_1(x), pos, k[i], v[i], visible)
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(t.ln_f(x))[:, -1, : model.config.vocab_size]


class StaticKVCache(KVCache):
    """A KVCache that also keeps one view per layer, made once: the compiled step takes them as its inputs."""

    def __init__(self, model: GPT, batch: int, max_len: int) -> None:
        c = model.config
        w = model.transformer.wte.weight
        super().__init__(c.n_layer, batch, c.n_head, max_len, c.head_dim, device=w.device, dtype=w.dtype)
        self.layers = (self.k.unbind(0), self.v.unbind(0))


class StaticDecodeStep:
    """The compiled step of one model, and the fixed-length caches it decodes into.

    Caches are pooled by (batch, length): the compiled code then sees the same shapes (and, for CUDA
    graphs, the same addresses) again. Calls are serialized: compilation and CUDA graph replays are not
    safe to run from several threads at once.
    """

    def __init__(self, model: GPT) -> None:
        self._model = weakref.ref(model)  # a strong one would keep the model alive through decoder_for's cache
        self.cuda = model.transformer.wte.weight.device.type == "cuda"
        mode = "reduce-overhead" if self.cuda else None  # CUDA graphs on GPU; plain inductor on CPU
        self.compiled = torch.compile(_static_step, mode=mode, fullgraph=True, dynamic=False)
        self.failure: str | None = None  # why compilation failed; the step then runs eagerly
        self._lock = threading.Lock()
        self._free: dict[tuple[int, int], list[StaticKVCache]] = {}

    @property
    def model(self) -> GPT:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this compiled step was deleted")
        return model

    def cache_len(self, needed: int) -> int:
        """The fixed cache length used for `needed` positions: a power of two, capped at the context window."""
        block = self.model.config.block_size
        return min(block, max(MIN_STATIC_LEN, 1 << (max(needed, 1) - 1).bit_length()))

    def acquire(self, batch: int, needed: int) -> StaticKVCache:
        key = (batch, self.cache_len(needed))
        with self._lock:
            if self._free.get(key):
                return self._free[key].pop()
        cache = StaticKVCache(self.model, *key)
        if self.cuda:
            for t in (*cache.layers[0], *cache.layers[1]):
                torch._dynamo.mark_static_address(t)
        return cache

    def release(self, cache: StaticKVCache) -> None:
        with self._lock:
            free = self._free.setdefault((cache.batch, cache.max_len), [])
            if len(free) < 2:  # keep a couple per shape; more would only hold memory
                free.append(cache)

    def __call__(self, tokens: torch.Tensor, pos: int, cache: StaticKVCache) -> torch.Tensor:
        idx = tokens[:, None]
        pos_t = torch.tensor([pos], device=tokens.device)
        with self._lock:
            if self.failure is None:
                try:
                    if self.cuda:
                        torch.compiler.cudagraph_mark_step_begin()
                    # CUDA graphs reuse their output buffer at the next replay: hand out a copy.
                    return self.compiled(self.model, idx, pos_t, *cache.layers).clone()
                except Exception as e:  # noqa: BLE001 -- any compiler failure falls back to eager
                    first_line = (str(e).strip().splitlines() or [""])[0]
                    self.failure = f"{type(e).__name__}: {first_line}"
                    log.warning("compiled decoding unavailable (%s); decoding uncompiled", self.failure)
            return _static_step(self.model, idx, pos_t, *cache.layers)


# --- one decoder per (model, mode) -------------------------------------------------------------
class Decoder:
    """The forwards generation makes for one model in one mode; logits always come back in fp32."""

    def __init__(self, model: GPT, mode: str, static: StaticDecodeStep | None = None) -> None:
        self.model = model  # the model actually run: a converted copy in the bf16 and int8 modes
        self.mode = mode
        self.static = static

    @property
    def compile_failure(self) -> str | None:
        """Why a compiled mode is running its step uncompiled (one line), or None."""
        return self.static.failure if self.static else None

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return self.static.acquire(batch, max_len) if self.static else self.model.new_cache(batch, max_len)

    def release(self, cache: KVCache | None) -> None:
        """Hands a cache from new_cache back when its generation is over (compiled mode reuses it)."""
        if self.static and cache is not None:
            self.static.release(cache)

    def prefill(self, tokens: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        return prefill(self.model, tokens, cache).float()

    def step(self, tokens: torch.Tensor, pos: int, cache: KVCache) -> torch.Tensor:
        if self.static:
            return self.static(tokens, pos, cache).float()
        return decode_step(self.model, tokens, pos, cache).float()


def _weights_key(model: GPT) -> tuple:
    """Changes when a weight tensor is replaced or modified in place (its version counter moves)."""
    return tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in model.parameters())


class _Built(NamedTuple):
    key: tuple  # _weights_key when built
    model: GPT | None  # the converted copy (int8, bf16, CPU layout); None: the mode runs the model itself
    static: StaticDecodeStep | None


# Values never hold the key model strongly (StaticDecodeStep keeps a weak reference), so entries go with it.
_built: weakref.WeakKeyDictionary[GPT, dict[str, _Built]] = weakref.WeakKeyDictionary()
_build_lock = threading.Lock()


def decoder_for(model: GPT, mode: str = "default") -> Decoder:
    """The Decoder of model in mode. Converted weights (int8, bf16) and the compiled step are built on first
    use and reused while the model's weights stay the same; compiled mode compiles on its first step."""
    check_mode(mode)
    if mode == "default" and _convert(model, mode) is None:
        return Decoder(model, mode)
    key = _weights_key(model)
    with _build_lock:
        built = _built.setdefault(model, {}).get(mode)
        if built is None or built.key != key:
            built = _build(model, mode, key)
            _built[model][mode] = built
    return Decoder(model if built.model is None else built.model, mode, built.static)


def _convert(model: GPT, mode: str) -> Callable[[GPT], GPT] | None:
    """The copy a mode runs instead of model, or None: the model itself."""
    if mode in ("default", "compiled"):
        # An FSDP model (core.parallel) holds shards of its weights: only its own forward gathers them.
        plain = not is_sharded(model)
        return cpu_decode_copy if plain and model.transformer.wte.weight.device.type == "cpu" else None
    return {"bf16": bf16_copy, "int8": int8_copy, "int8-compiled": int8_copy}[mode]


def _build(model: GPT, mode: str, key: tuple) -> _Built:
    convert = _convert(model, mode)
    converted = convert(model) if convert else None
    static = StaticDecodeStep(converted or model) if mode.endswith("compiled") else None
    return _Built(key, converted, static)


# --- quality ------------------------------------------------------------------------------------
class ModeQuality(NamedTuple):
    max_logit_diff: float  # largest |logit - default mode's logit| over the vocabulary and every step
    agreement: float  # share of steps whose most likely token is the default mode's greedy token
    steps: int


def compare_with_default(model: GPT, mode: str, prompt: Sequence[int], steps: int = 128) -> ModeQuality:
    """How closely `mode` follows the default mode on one greedy continuation of prompt.

    Teacher-forced: both decoders read the prompt, then both are fed the default mode's greedy token at
    every step, so a single early difference is counted once instead of derailing every later token.
    """
    if len(prompt) + steps - 1 > model.config.block_size:
        raise ValueError(f"prompt ({len(prompt)}) + steps ({steps}) must fit the context window")
    ref, test = decoder_for(model), decoder_for(model, mode)
    device = model.transformer.wte.weight.device
    diff, agree = 0.0, 0
    with torch.inference_mode():
        ids = torch.tensor([list(prompt)], device=device)
        caches = ref.new_cache(1, len(prompt) + steps), test.new_cache(1, len(prompt) + steps)
        a, b = ref.prefill(ids, caches[0]), test.prefill(ids, caches[1])
        for i in range(steps):
            tok = a.argmax(-1)
            diff = max(diff, (a - b).abs().max().item())
            agree += int(torch.equal(b.argmax(-1), tok))
            if i + 1 < steps:
                a, b = ref.step(tok, len(prompt) + i, caches[0]), test.step(tok, len(prompt) + i, caches[1])
        test.release(caches[1])
    return ModeQuality(diff, agree / steps, steps)
