"""``hlvm demo``: the main job, the same as ``make demo`` — ``hlvm compare`` of the VAE, bottom-up
HVAE, top-down HVAE and VDM under one budget on the embedded MNIST subset (report in
``reports/demo``).  Every ``compare`` option applies; only the defaults differ (:data:`DEMO`).

"Demo" means this comparison and nothing else.  The earlier foundation demo — forward-process
statistics and analytic KLs with a Gaussian oracle denoiser, once a module of the library — is
neither a command nor a module now: it is the example ``python examples/oracle_tour.py``.
"""

from hlvm.cli import compare

__all__ = ["DEMO", "register"]

#: ``hlvm demo`` = ``hlvm compare`` with these defaults
DEMO = {"models": "vae,hvae-bu,hvae-td,vdm", "data": "mnist5k", "steps": 2000, "out": "reports/demo"}


def register(sub):
    p = sub.add_parser("demo", help="the main job (= make demo): compare the four zoo models on the embedded "
                                    "MNIST subset, report in reports/demo",
                       description="hlvm compare " + " ".join(f"--{k} {v}" for k, v in DEMO.items())
                                   + " (every compare option applies)",
                       epilog="Not the Gaussian-oracle tour of the forward process: that is the example "
                              "python examples/oracle_tour.py.")
    compare.add_arguments(p)
    p.set_defaults(func=compare.run, **DEMO)
