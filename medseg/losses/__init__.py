"""medseg losses: every loss of the Azad et al. (2023) survey behind one MONAI-style API.

Build by name with :func:`get_loss`; list with :func:`list_losses`. Importing a family module registers its
losses; each family module lists its classes in ``__all__``.
"""

from .boundary import *  # noqa: F403
from .boundary_networks import *  # noqa: F403
from .compound import *  # noqa: F403
from .lovasz import *  # noqa: F403
from .mutual_information import *  # noqa: F403
from .pixel import *  # noqa: F403
from .region import *  # noqa: F403
from .registry import LossInfo, get_loss, list_losses, loss_info  # noqa: F401
