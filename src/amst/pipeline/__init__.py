"""The AMST pipeline as a run does it: stages wired on an executor, with resume.

The maths lives in pure functions elsewhere (:mod:`amst.prealign`, :mod:`amst.template`,
:mod:`amst.register`, :mod:`amst.combine`, :mod:`amst.warp`, :mod:`amst.zspacing`); this
package runs them in the order of the data flow, one module per step:

* :mod:`~amst.pipeline.run` -- :func:`align`: the stages in order, timed (:mod:`~amst.pipeline.clock`);
* :mod:`~amst.pipeline.output_folder` -- OUT: what the run owns, its digest, the output stack;
* :mod:`~amst.pipeline.prealign_stage` -- step 1, pre-alignment, saved for a resume;
* :mod:`~amst.pipeline.plan` -- what each registration pass does (pure);
* :mod:`~amst.pipeline.register_pass` -- steps 2-3, the worker: templates and registration of a block;
* :mod:`~amst.pipeline.combination` and :mod:`~amst.pipeline.refine` -- each slice's final affine;
* :mod:`~amst.pipeline.resample` -- each raw slice resampled once, written;
* :mod:`~amst.pipeline.even_z` -- slice depths and the even-z output (``z_spacing``);
* :mod:`~amst.pipeline.apply` -- :func:`apply`: saved transforms on another stack;
* :mod:`~amst.pipeline.records`, :mod:`~amst.pipeline.journal`, :mod:`~amst.pipeline.blocks` --
  what a worker returns, how it is journalled, how work is cut and mapped.
"""

from ..fallbacks import RunError
from .apply import apply
from .register_pass import register_block
from .resample import resample_block
from .run import AlignResult, align, attach_log

__all__ = ["align", "apply", "AlignResult", "RunError", "attach_log", "register_block", "resample_block"]
