"""What a loop node can call to check or look something up. No knowledge of loops."""

from loopwright.tools.numeric import NumericVerdict, check_number, extract_number

__all__ = ["NumericVerdict", "check_number", "extract_number"]
