"""core/v1 node selectors as the API server validates them (ResourceSlices, allocation results)."""

from __future__ import annotations

from driver.kube.api.fields import (
    JSON,
    Errors,
    Path,
    add_messages,
    forbidden,
    get_list,
    get_str,
    invalid,
    items_of,
    required,
)
from driver.kube.api.names import dns1123_subdomain_errors, validate_label_name, validate_label_value


def validate_node_name(name: str, path: Path, out: Errors) -> None:
    add_messages(path, name, dns1123_subdomain_errors(name), out)


def _validate_node_selector_requirement(req: JSON, path: Path, out: Errors, *, fields: bool) -> None:
    key = get_str(req, "key", path, out) or ""
    op = get_str(req, "operator", path, out) or ""
    values = [v for v in (get_list(req, "values", path, out) or []) if isinstance(v, str)]
    values_path = path.child("values")
    if fields:
        if key != "metadata.name":
            out.append(invalid(path.child("key"), key, "not a valid field selector key"))
        if op not in ("In", "NotIn"):
            out.append(invalid(path.child("operator"), op, "not a valid selector operator"))
        elif len(values) != 1:
            out.append(
                required(
                    values_path,
                    "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
                )
            )
        for i, value in enumerate(values):
            validate_node_name(value, values_path.index(i), out)
        return
    if op in ("In", "NotIn"):
        if not values:
            out.append(required(values_path, "must be specified when `operator` is 'In' or 'NotIn'"))
    elif op in ("Exists", "DoesNotExist"):
        if values:
            out.append(
                forbidden(values_path, "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
            )
    elif op in ("Gt", "Lt"):
        if len(values) != 1:
            out.append(
                required(values_path, "must be specified single value when `operator` is 'Lt' or 'Gt'")
            )
    else:
        out.append(invalid(path.child("operator"), op, "not a valid selector operator"))
    validate_label_name(key, path.child("key"), out)
    for i, value in enumerate(values):
        validate_label_value(value, values_path.index(i), out)


def validate_node_selector(
    selector: JSON, path: Path, out: Errors, *, exactly_one_term: bool = False
) -> None:
    """A core/v1 NodeSelector (the slice form must have exactly one term)."""
    terms_path = path.child("nodeSelectorTerms")
    terms = get_list(selector, "nodeSelectorTerms", path, out)
    if not terms:
        out.append(required(terms_path, "must have at least one node selector term"))
    for term_path, term in items_of(terms, terms_path, out):
        for kind, fields in (("matchExpressions", False), ("matchFields", True)):
            for req_path, req in items_of(get_list(term, kind, term_path, out), term_path.child(kind), out):
                _validate_node_selector_requirement(req, req_path, out, fields=fields)
    if exactly_one_term and len(terms or []) != 1:
        out.append(invalid(terms_path, terms, "must have exactly one node selector term"))
