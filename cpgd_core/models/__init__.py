"""Networks, one module per network (config dataclass + nn.Module). Import the module you need:
``from cpgd_core.models.cpfp import CPFP`` (kept lazy so that importing one model never pulls another's
dependencies)."""
