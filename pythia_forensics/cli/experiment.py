"""`pythia-forensics experiment kill|rescue|all`: intervention experiments on the mini suite
(thin shells over `interventions.run_kill` / `run_rescue`). The output folder is checked
before any arm trains."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


OUT = typer.Option(Path("results/experiments"), "--out", help="Experiment folder; the arms go to OUT/suite.")


def _floats(text: str, param: str) -> list[float]:
    from pythia_forensics.experiments.interventions import InterventionError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InterventionError(f"values must be comma-separated numbers, got {text!r}", param=param) from None


def _check_out(out: Path) -> None:
    from pythia_forensics.cli.common import check_output_dir

    check_output_dir(out, "--out")


def register(app: typer.Typer) -> None:
    exp = typer.Typer(help="Interventions on the mini suite: kill ladder and rescue.", no_args_is_help=True)
    app.add_typer(exp, name="experiment")

    @exp.command("kill")
    def kill_cmd(rule: Optional[str] = typer.Option(None, help="Rule to kill (default from interventions.yaml)."),
                 doses: str = typer.Option("0,0.5,0.75,0.9,1", help="Flip fractions p."),
                 seeds: int = typer.Option(3, help="Seeds per dose."),
                 out: Path = OUT) -> None:
        """Flip ladder: final accuracy/CM per dose and seed, Spearman rho, off-target checks."""
        from pythia_forensics.cli.common import console
        from pythia_forensics.experiments.interventions import load_config, run_kill

        _check_out(out)
        cfg = load_config()
        base = cfg["kill"]["seeds"][0]
        rep = run_kill(rule or cfg["kill"]["rule"], _floats(doses, "doses"), [base + i for i in range(seeds)], out)
        console.print(json.dumps({k: rep[k] for k in ("mean_final_acc", "mean_final_cm", "spearman_rho",
                                                      "off_target_ok")}, indent=1))

    @exp.command("rescue")
    def rescue_cmd(rule: Optional[str] = typer.Option(None, help="Collapsed rule to rescue."),
                   multiples: str = typer.Option("0,3,10", "--doses",
                                                 help="Injected density as multiples of the surviving level."),
                   out: Path = OUT) -> None:
        """Inject support after the collapse; report whether behaviour and margin move."""
        from pythia_forensics.cli.common import console
        from pythia_forensics.experiments.interventions import load_config, run_rescue

        _check_out(out)
        cfg = load_config()
        rep = run_rescue(rule or cfg["rescue"]["rule"], _floats(multiples, "multiples"), out)
        console.print(json.dumps(rep["arms"], indent=1))

    @exp.command("all")
    def all_cmd(out: Path = OUT) -> None:
        """Kill ladder + rescue with the configured defaults (`make experiments`)."""
        from pythia_forensics.cli.common import console
        from pythia_forensics.experiments.interventions import load_config, run_kill, run_rescue

        _check_out(out)
        cfg = load_config()
        k = run_kill(cfg["kill"]["rule"], cfg["kill"]["doses"], cfg["kill"]["seeds"], out)
        r = run_rescue(cfg["rescue"]["rule"], cfg["rescue"]["multiples"], out)
        console.print(json.dumps({"kill": {x: k[x] for x in ("mean_final_acc", "spearman_rho", "off_target_ok")},
                                  "rescue": r["arms"]}, indent=1))
