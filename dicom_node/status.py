"""DIMSE status codes the node answers with (PS3.4 Annex B for the Storage Service Class, PS3.7 Annex C).

The 0xC2xx sub-codes are ours within the Storage class's "Cannot understand" range; each comes with an
Error Comment (0000,0902) that tells the sender's operator the reason in words.
"""

from __future__ import annotations

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND_UNPARSABLE = 0xC210
CANNOT_UNDERSTAND_INTERNAL_ERROR = 0xC211
CANNOT_UNDERSTAND_MISSING_UID = 0xC220
CANNOT_UNDERSTAND_PIXEL_DATA = 0xC230
# The SOP Instance UID is stored already with other content. A UID names one object: the stored one is
# kept and the sender told, never silently replaced or dropped. (PS3.7's "Duplicate SOP Instance" 0x0111
# is an N-CREATE status that DCMTK's storescu shows as "Unknown Status"; a Cannot understand sub-code with
# its Error Comment reads as a failure in every sender.)
DUPLICATE_SOP_INSTANCE = 0xC240

# Query/Retrieve (PS3.4 C.4) and the general "not authorised" (PS3.7 C.5).
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORISED = 0x0124
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801

# A-ASSOCIATE-RJ (result, source, diagnostic) for a calling AE title/address pair that is not allowed:
# rejected-permanent, service-user, calling-AE-title-not-recognized.
REJECT_CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
# rejected-transient, service-provider (presentation), local-limit-exceeded: too many open from one address.
REJECT_LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
