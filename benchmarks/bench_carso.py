"""CARSO prediction (`andor_jax.models.carso`): draws decoded and classified, then the vote, against a PyTorch
eager implementation of the same networks and vote, and against plain matrix multiplications of the same
sizes, all in one run.

    python benchmarks/bench_carso.py [--images 1000] [--draws 1500] [--json out.json]

Equal arithmetic: both implementations decode and classify every draw of every image in the same chunks
(``--draws-per-chunk`` latents of ``--examples-per-chunk`` images at a time, batched), with the same layer
sizes and the same parameters, and take the mode of the argmax; neither stops early.  Figures:

- ``examples_per_second`` of each, ``speedup`` = PyTorch time / JAX time;
- ``gflops``: the multiply-adds of the dense layers (2 flops each) per second, and ``matmul_gflops``: the
  rate of the same matrix products (same shapes, no activations, jit-compiled) timed in the same run;
  ``fraction_of_peak`` = gflops / matmul_gflops (how close the pipeline gets to what XLA:CPU's matmuls reach
  on this machine now);
- ``skippable_fraction`` (reported separately, never applied to the timings): the fraction of draws after
  which an image's vote could no longer change (the leader ahead of the runner-up by more than the draws
  left), i.e. work an early-stopping implementation would skip;
- ``peak_rss_mb`` after the JAX run (the process's high-water mark) and the extrapolated time for 10,000
  images at this number of draws.
"""
from __future__ import annotations

import argparse
import resource
import time

import jax
import numpy as np

from andor_jax.models import carso
from common import configure_torch_threads, interleaved_medians, summary_row, write_json


def dense_shapes(model: carso.Carso) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``(per_draw, per_image)`` (in, out) shapes of the dense layers: decoder and classifier for every draw;
    classifier and representation compressor once per image."""
    p, c = model.purifier, model.classifier
    decoder_in = p.latent + p.representation_widths[-1]
    decoder = list(zip((decoder_in, *p.decoder_widths), (*p.decoder_widths, p.image_size)))
    hidden = [layer.features for layer in c.layers if hasattr(layer, "features")]
    classifier = list(zip((p.image_size, *hidden[:-1]), hidden))
    representation = sum(hidden)
    compressor = list(zip((representation, *p.representation_widths[:-1]), p.representation_widths))
    return decoder + classifier, classifier + compressor


def flops(shapes) -> int:
    return sum(2 * a * b for a, b in shapes)


def torch_networks(torch, model: carso.Carso, variables):
    """The classifier, the representation compressor and the decoder as PyTorch eager functions with the JAX
    parameters (BatchNorm at inference as its affine map)."""
    F = torch.nn.functional
    t = lambda a: torch.from_numpy(np.array(a, np.float32))

    def sequence(layers, params, stats):
        ops = []
        for index, layer in enumerate(layers):
            name = f"layers_{index}"
            kind = type(layer).__name__
            if kind == "Dense":
                ops.append(("dense", t(params[name]["kernel"]), t(params[name]["bias"])))
            elif kind == "BatchNorm":
                slope = params[name]["scale"] / np.sqrt(stats[name]["var"] + layer.epsilon)
                ops.append(("affine", t(slope), t(params[name]["bias"] - slope * stats[name]["mean"])))
            elif kind == "Activation":
                ops.append(("act", layer.kind, None))
            elif kind == "Standardise":
                ops.append(("affine", t(np.full(1, 1 / layer.std)), t(np.full(1, -layer.mean / layer.std))))
            else:  # Dropout: the identity at inference
                ops.append(("identity", None, None))
        acts = {"mish": F.mish, "leaky_relu": lambda v: F.leaky_relu(v, 0.01), "sigmoid": torch.sigmoid,
                "tanh": torch.tanh}

        def run(h, taps=()):
            outputs = []
            for index, (kind, a, b) in enumerate(ops):
                if kind == "dense":
                    h = torch.addmm(b, h, a)
                elif kind == "affine":
                    h = h * a + b
                elif kind == "act":
                    h = acts[a](h)
                if index in taps:
                    outputs.append(h)
            return (h, outputs) if taps else h
        return run, ops

    params, stats = variables["params"], variables["batch_stats"]
    classifier, ops = sequence(model.classifier.layers, params["classifier"], stats["classifier"])
    compressor, _ = sequence(carso.representation_compressor_layers(model.purifier),
                             params["purifier"]["representation_compressor"], stats["purifier"]["representation_compressor"])
    decoder, _ = sequence(carso.decoder_layers(model.purifier), params["purifier"]["decoder"], {})
    # One op per layer, so the representation's taps are layer indices.
    taps = tuple(int(path.split("_")[1]) for path in model.representation_paths)
    return classifier, compressor, decoder, taps


def torch_predict(torch, nets, x, *, n_draws, draws_per_chunk, examples_per_chunk, latent, seed=0):
    """Votes (images, classes) of the PyTorch implementation, and the number of draws that early stopping
    would have skipped."""
    classifier, compressor, decoder, taps = nets
    generator = torch.Generator().manual_seed(seed)
    votes, skippable = [], 0
    with torch.no_grad():
        for start in range(0, x.shape[0], examples_per_chunk):
            xs = x[start:start + examples_per_chunk]
            _, outputs = classifier(xs, taps)
            condition = compressor(torch.cat(outputs, -1))
            counts = torch.zeros(xs.shape[0], 10)
            stopped = torch.zeros(xs.shape[0], dtype=torch.bool)
            done = 0
            while done < n_draws:
                count = min(draws_per_chunk, n_draws - done)
                z = torch.randn(count, xs.shape[0], latent, generator=generator)
                inputs = torch.cat([z, condition.expand(count, -1, -1)], -1).reshape(count * xs.shape[0], -1)
                logits = classifier(torch.sigmoid(decoder(inputs)))
                counts += torch.nn.functional.one_hot(logits.argmax(-1), 10).reshape(count, xs.shape[0], 10).sum(0)
                done += count
                top2 = counts.topk(2, -1).values
                newly = ~stopped & (top2[:, 0] - top2[:, 1] > n_draws - done)
                skippable += int(newly.sum()) * (n_draws - done)
                stopped |= newly
            votes.append(counts)
    return torch.cat(votes), skippable


def matmul_chain(shapes, rows):
    """A jit-compiled chain of plain matrix products of the given (in, out) shapes on ``rows`` rows (the
    input of each taken from a fixed random matrix, so no activation is computed)."""
    keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
    inputs = [jax.random.normal(k, (rows, a)) for k, (a, _) in zip(keys, shapes)]
    weights = [jax.random.normal(k, (a, b)) * 0.01 for k, (a, b) in zip(keys, shapes)]
    fn = jax.jit(lambda xs, ws: [x @ w for x, w in zip(xs, ws)])
    return lambda: jax.block_until_ready(fn(inputs, weights))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1500)
    parser.add_argument("--draws-per-chunk", type=int, default=250)
    parser.add_argument("--examples-per-chunk", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch = configure_torch_threads()

    model = carso.get_model(n_draws=args.draws, draws_per_chunk=args.draws_per_chunk,
                            examples_per_chunk=args.examples_per_chunk)
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (args.images, 784)))
    variables = model.init({"params": jax.random.PRNGKey(1)}, x[:1])
    key = jax.random.PRNGKey(2)

    jax_predict = jax.jit(lambda v, inputs, k: model.apply(v, inputs, rngs={"sample": k}))
    jax_run = lambda: jax.block_until_ready(jax_predict(variables, x, key))
    started = time.perf_counter()
    jax_run()
    compile_and_first = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    nets = torch_networks(torch, model, variables)
    x_torch = torch.from_numpy(np.array(x))
    settings = dict(n_draws=args.draws, draws_per_chunk=args.draws_per_chunk,
                    examples_per_chunk=args.examples_per_chunk, latent=model.purifier.latent)
    torch_run = lambda: torch_predict(torch, nets, x_torch, **settings)
    _, skipped_draws = torch_run()
    # Same networks: on the clean path (the classifier itself) both must agree.
    reference = np.asarray(model.classifier.apply({c: t["classifier"] for c, t in variables.items()}, x[:8]))
    np.testing.assert_allclose(nets[0](x_torch[:8]).numpy(), reference, rtol=1e-3, atol=1e-4)

    per_draw, per_image = dense_shapes(model)
    rows = min(args.draws_per_chunk, args.draws) * min(args.examples_per_chunk, args.images)
    matmul = matmul_chain(per_draw, rows)
    times = interleaved_medians({"jax": jax_run, "torch": torch_run, "matmul": matmul}, rounds=args.rounds, warmup=0)
    total_flops = args.images * (args.draws * flops(per_draw) + flops(per_image))
    gflops = total_flops / times["jax"] / 1e9
    matmul_gflops = rows * flops(per_draw) / times["matmul"] / 1e9
    figures = {
        "images": args.images, "draws": args.draws, "draws_per_chunk": args.draws_per_chunk,
        "examples_per_chunk": args.examples_per_chunk,
        "jax_seconds": times["jax"], "torch_seconds": times["torch"], "matmul_seconds": times["matmul"],
        "jax_examples_per_second": args.images / times["jax"],
        "torch_examples_per_second": args.images / times["torch"],
        "speedup": times["torch"] / times["jax"],
        "gflops": gflops, "torch_gflops": total_flops / times["torch"] / 1e9, "matmul_gflops": matmul_gflops,
        "fraction_of_peak": gflops / matmul_gflops,
        "skippable_fraction": skipped_draws / (args.images * args.draws),
        "jax_compile_and_first_call_seconds": compile_and_first,
        "peak_rss_mb_after_jax": peak_rss_mb,
        "extrapolated_seconds_for_10000_images": times["jax"] * 10000 / args.images,
    }
    figures["summary"] = [summary_row(f"CARSO prediction, {args.images} images x {args.draws} draws",
                                      ours_s=times["jax"], reference_s=times["torch"], reference="PyTorch eager",
                                      primitive="matmul chain of one chunk", fraction=figures["fraction_of_peak"])]
    for name, value in figures.items():
        if name != "summary":
            print(f"{name:40s} {value:.4g}" if isinstance(value, float) else f"{name:40s} {value}")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
