"""Reflow pair sets on disk: one .npz file per chunk (`z`, `x`), written and read back in order,
so a large pair set never has to live in memory at once. The implementation lives in the data
layer (`diffjax.data.pairs_source`, also the 'pairs' data source); these names stay here."""

from __future__ import annotations

from diffjax.data.pairs_source import NpzChunkWriter, chunk_paths, iter_pairs, load_pairs

__all__ = ["NpzChunkWriter", "chunk_paths", "iter_pairs", "load_pairs"]


def generate_pairs(
    teacher_workdir: str,
    out: str,
    num: int,
    *,
    solver: str = "euler",
    steps: int = 100,
    chunk_size: int = 1024,
    seed: int = 0,
) -> dict:
    """Write `num` reflow pairs of the EMA flow in `teacher_workdir` (read-only) to `out` as
    `NpzChunkWriter` chunks, the solve sharded over every local device; also `out/pairs_info.
    json` (what made them). Files go through `diffjax.train.paths` and are written by the
    primary process only. Returns that info dict.

    Raises: ValueError for a teacher that is not a rectified flow, or a chunk size that does
      not divide over the devices.
    """
    import jax

    from diffjax import parallel, reflow
    from diffjax.models import bind
    from diffjax.train import paths
    from diffjax.train.workdir import load_trained

    mesh = parallel.make_mesh()
    if chunk_size % mesh.size or (num % chunk_size) % mesh.size:
        raise ValueError(
            f"chunk_size={chunk_size} and the last chunk ({num % chunk_size or chunk_size} of "
            f"num={num}) must divide over the {mesh.size} devices"
        )
    spec, _, trained = load_trained(teacher_workdir, mesh)
    model = bind(spec.model, {"params": trained.ema_params})
    reflow.make_pairs(
        jax.random.PRNGKey(seed), model, spec.process, num, tuple(spec.example.shape),
        solver=solver, steps=steps, chunk_size=chunk_size, prediction=spec.prediction,
        writer=NpzChunkWriter(paths.workdir_path(out)), sharding=parallel.data_sharding(mesh),
    )  # fmt: skip
    info = {
        "teacher_workdir": paths.absolute(teacher_workdir), "teacher_step": int(trained.step),
        "num": int(num), "solver": solver, "steps": int(steps), "chunk_size": int(chunk_size),
        "seed": int(seed), "shape": list(spec.example.shape),
    }  # fmt: skip
    if parallel.is_primary():
        paths.write_json(paths.workdir_path(out) / "pairs_info.json", info)
    return info
