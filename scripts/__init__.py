"""MedSyn-MONAI: text-guided, anatomy-aware cascaded 3D diffusion for chest CT, as a MONAI bundle.

The package is laid out in pipeline order and each part imports only from the parts before it:
``conventions`` → ``data`` / ``phantom`` → ``text`` → ``networks`` → ``diffusion`` → ``engines`` →
``inference`` → ``evaluation`` / ``anatomy``. Bundle configs import it as ``$scripts...``.
"""

__version__ = "0.1.0"
