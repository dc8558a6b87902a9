"""The form fields of ``POST /enhance``, declared once and shared with ``POST /jobs`` (a job is the same
request, answered later), as a FastAPI dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import File, Form, Query, UploadFile
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from service.imageio import OutputFormat
from service.jobs import EnhanceOptions
from service.strength import AUTO

Quality = Annotated[int, Field(ge=1, le=100)]
StrengthParameter = Literal["auto"] | Annotated[float, Field(ge=0.0, le=1.0)]
KEEP_GPS_HELP = (
    "Keep the upload's GPS position in the answer's EXIF (default: FRLIE_KEEP_GPS, off). The rest of the EXIF "
    "(camera, dates, exposure) is kept with the orientation reset; the embedded thumbnail is dropped."
)
STRENGTH_HELP = (
    "How much of the model's effect to apply: 'auto' (default: enough to bring the photo to a normal "
    "brightness and no more, full strength for noisy low-light captures; photos that are already bright "
    "come back unchanged) or a number from 0 (the upload unchanged) to 1 (the model output)."
)


@dataclass(frozen=True)
class EnhanceForm:
    """The uploaded file and the options it is to be enhanced with."""

    image: UploadFile
    options: EnhanceOptions


async def enhance_form(
    image: Annotated[
        UploadFile,
        File(
            description="JPEG, PNG, WebP, BMP, TIFF, AVIF or HEIC/HEIF image (multipart field `image`); "
            "16-bit PNG and TIFF keep their depth.",
            json_schema_extra={"minLength": 1},
        ),
    ],
    format_field: Annotated[
        OutputFormat | SkipJsonSchema[None],
        Form(
            alias="format",
            description="Output encoding; default: JPEG for JPEG and HEIC input, AVIF for AVIF, PNG otherwise "
            "(16 bits for a 16-bit upload).",
        ),
    ] = None,
    quality_field: Annotated[
        Quality | SkipJsonSchema[None], Form(alias="quality", description="JPEG/WebP/AVIF quality (1-100).")
    ] = None,
    format_query: Annotated[
        OutputFormat | SkipJsonSchema[None],
        Query(alias="format", description="Same as the form field (the form field wins)."),
    ] = None,
    quality_query: Annotated[
        Quality | SkipJsonSchema[None],
        Query(alias="quality", description="Same as the form field (the form field wins)."),
    ] = None,
    strength_field: Annotated[
        StrengthParameter | SkipJsonSchema[None], Form(alias="strength", description=STRENGTH_HELP)
    ] = None,
    strength_query: Annotated[
        StrengthParameter | SkipJsonSchema[None],
        Query(alias="strength", description="Same as the form field (the form field wins)."),
    ] = None,
    keep_gps_field: Annotated[bool | SkipJsonSchema[None], Form(alias="keep_gps", description=KEEP_GPS_HELP)] = None,
    keep_gps_query: Annotated[
        bool | SkipJsonSchema[None],
        Query(alias="keep_gps", description="Same as the form field (the form field wins)."),
    ] = None,
) -> EnhanceForm:
    """Form fields win over the same names in the query string."""
    strength = next((value for value in (strength_field, strength_query) if value is not None), AUTO)
    keep_gps = keep_gps_field if keep_gps_field is not None else keep_gps_query
    options = EnhanceOptions(format_field or format_query, quality_field or quality_query, strength, keep_gps)
    return EnhanceForm(image, options)
