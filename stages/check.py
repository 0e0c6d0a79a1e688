"""Stage 0: check the whole params.yaml, the experiment's name and the MLflow store before any
other stage runs.

DVC reruns a stage only when a param it lists changed, so a misspelt top-level key (`Temp: 8`)
would pass unseen, and DVC deletes a stage's outputs before running it, so a bad value found by
that stage costs its previous outputs. This stage lists the whole file: any change to params.yaml
(every `-S`) runs it first, and every other stage depends on its output, so a bad params.yaml or
experiment name (exit status 2) or an unreachable or read-only MLflow store (exit status 1) stops
the pipeline here, in seconds, before anything else is touched. It also records the params
file's bytes for the stages after it (kd/process/params_watch.py). When it does not run (no params
changed), each stage makes the same name and store checks before it trains, and a stage that
fails puts its previous outputs back (kd/process/restore_outputs.py).

The output's content never changes, so a valid change reruns only the stages whose params it
touched. Run: python -m stages.check
"""

from __future__ import annotations

from kd import losses
from kd.config import memory_budget
from kd.process import cli, files, params_watch
from kd.track import store, store_access

OK = "params.yaml passed the checks of kd/config/params.py and kd/losses/\n"


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    cli.path_option(ap, "out", "checks/params.ok", "marker the other stages depend on")
    args = ap.parse_args(argv)
    p = cli.params_or_exit(args.params, losses.validate)
    memory_budget.refuse_what_cannot_fit(p, args.params)  # before any stage allocates it
    with cli.friendly_errors():
        if store.enabled():
            store_access.probe()
            store_access.prove()  # a usable store: its kind, a login, a read and a write
        params_watch.record(args.params)
        files.write_text(args.out, OK)
    print(f"check: {args.params} is valid")


if __name__ == "__main__":
    main()
