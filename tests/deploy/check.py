#!/usr/bin/env python3
"""Checks of deploy/ that the off-the-shelf validators do not make; run by
`cargo xtask test` (xtask/src/deploy_check.rs) with the Python of the
deploy-tools venv that `cargo xtask setup` installs.

    check.py resources --crds deploy/crds -k 1.33.0 -k 1.37.0 FILE...
        Every document of FILE: a custom resource of one of the CRDs is
        validated against that CRD's openAPIV3Schema (jsonschema, with
        unknown fields rejected like `kubectl apply --validate=strict`, and
        the CRD's scope, group, version and kind checked); any other object
        with kubernetes-validate (strict) for each Kubernetes version. An
        object of an unknown kind fails. CEL rules (x-kubernetes-validations)
        are NOT evaluated.
    check.py lint FILE
        Project rules on a rendered overlay (see `lint`).
    check.py mutate FILE OUTDIR
        Writes broken copies of a rendered overlay that the checks must
        reject (xtask runs them and fails if one passes).
    check.py break-resource FILE OUT
        Writes a copy of FILE whose first custom resource has an unknown
        field in its spec.

Exit status 1 on any failure, each printed.
"""

import argparse
import copy
import glob
import os
import re
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def strict_schema(schema):
    """The CRD's structural schema as JSON Schema: `nullable`, int-or-string
    and unknown fields as the API server treats them (unknown fields are
    errors here, as with strict field validation, not silently pruned)."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: strict_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = strict_schema(value)
        else:
            out[key] = value
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = out.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        for k in ("apiVersion", "kind"):
            props.setdefault(k, {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_crds(crd_dir):
    """(group, version, kind) -> (scope, JSON Schema, CRD name), served versions only."""
    crds = {}
    files = sorted(glob.glob(os.path.join(crd_dir, "*.yaml")))
    for path in files:
        for doc in load_all(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec["versions"]:
                if not v.get("served", False):
                    continue
                schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
                props = schema.setdefault("properties", {})
                # The API server owns these; metadata is checked apart.
                props["apiVersion"] = {"type": "string"}
                props["kind"] = {"type": "string"}
                props["metadata"] = {"type": "object"}
                crds[(spec["group"], v["name"], spec["names"]["kind"])] = (
                    spec["scope"],
                    strict_schema(schema),
                    doc["metadata"]["name"],
                )
    if not crds:
        sys.exit(f"check.py: no CustomResourceDefinition under {crd_dir}")
    return crds


def name_of(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


def check_custom(doc, scope, schema, crd, errors):
    meta = doc.get("metadata")
    problems = []
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        problems.append("metadata.name is missing")
    else:
        if not DNS1123_SUBDOMAIN.match(meta["name"]) or len(meta["name"]) > 253:
            problems.append(f"metadata.name {meta['name']!r} is not a DNS-1123 subdomain")
        if scope == "Namespaced" and not meta.get("namespace"):
            problems.append("a namespaced kind without metadata.namespace")
        if scope == "Cluster" and "namespace" in meta:
            problems.append("a cluster-scoped kind with metadata.namespace")
        for field in ("labels", "annotations"):
            values = meta.get(field) or {}
            if not all(isinstance(v, str) for v in values.values()):
                problems.append(f"metadata.{field} values must be strings")
    validator = jsonschema.Draft7Validator(schema)
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in e.absolute_path) or "(root)"
        problems.append(f"{path}: {e.message}")
    for p in problems:
        errors.append(f"{name_of(doc)}: {p}")
    if not problems:
        print(f"  ok  {name_of(doc)} (schema of CRD {crd})")


def resources(args):
    crds = load_crds(args.crds)
    errors = []
    count = 0
    for path in args.files:
        for doc in load_all(path):
            count += 1
            api = doc.get("apiVersion", "")
            group, _, version = api.rpartition("/")
            key = (group, version, doc.get("kind"))
            if key in crds:
                scope, schema, crd = crds[key]
                check_custom(doc, scope, schema, crd, errors)
                continue
            if group in {g for g, _, _ in crds}:
                errors.append(f"{name_of(doc)}: no served version/kind {api} {doc.get('kind')} in the CRDs")
                continue
            for k8s in args.k8s:
                try:
                    kv.validate(doc, k8s, strict=True)
                except kv.SchemaNotFoundError:
                    errors.append(f"{name_of(doc)}: no schema for {api} {doc.get('kind')} in Kubernetes {k8s}")
                    continue
                except kv.ValidationError as e:
                    path = ".".join(str(p) for p in e.path) or "(root)"
                    errors.append(f"{name_of(doc)}: Kubernetes {k8s}: {path}: {e.message}")
                    continue
                print(f"  ok  {name_of(doc)} (kubernetes-validate --strict, Kubernetes {k8s})")
    if count == 0:
        errors.append("no document to check")
    report(errors)


def containers(pod_spec):
    return (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or [])


def lint(args):
    """Rules the generic validators do not know."""
    docs = load_all(args.file)
    errors = []
    daemonsets = [d for d in docs if d.get("kind") == "DaemonSet"]
    if len(daemonsets) != 1:
        errors.append(f"expected one DaemonSet, found {len(daemonsets)}")
    for ds in daemonsets:
        spec = ds["spec"]["template"]["spec"]
        rolling = (ds["spec"].get("updateStrategy") or {}).get("rollingUpdate") or {}
        # A declared port on hostNetwork becomes a hostPort; the surge pod
        # of a rolling update then cannot be scheduled next to the old one
        # (kubernetes/kubernetes#106417).
        if spec.get("hostNetwork") and str(rolling.get("maxSurge", 0)) not in ("0", "0%"):
            for c in containers(spec):
                if c.get("ports"):
                    errors.append(f"{name_of(ds)}: container {c['name']} declares ports on hostNetwork with maxSurge: "
                                  "each becomes a hostPort and the surge pod cannot be scheduled")
        env = {}
        for c in spec.get("containers") or []:
            for e in c.get("env") or []:
                env[e["name"]] = e
        # What `portcullis agent` needs from the downward API.
        for var, field in (("NODE_NAME", "spec.nodeName"), ("POD_UID", "metadata.uid")):
            got = ((env.get(var) or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
            if got != field:
                errors.append(f"{name_of(ds)}: env {var} must come from fieldRef {field} (found {got})")
    # The agent's ClusterRoles: reading, plus creating/patching Events (the
    # pod-events component). Nothing else, no wildcards, no secrets.
    for role in (d for d in docs if d.get("kind") in ("ClusterRole", "Role")):
        for rule in role.get("rules") or []:
            groups, res, verbs = rule.get("apiGroups") or [], rule.get("resources") or [], set(rule.get("verbs") or [])
            if "*" in groups or "*" in res or "*" in verbs:
                errors.append(f"{name_of(role)}: wildcard in {rule}")
            if "secrets" in res:
                errors.append(f"{name_of(role)}: grants access to secrets")
            events = groups == ["events.k8s.io"] and res == ["events"]
            allowed = {"create", "patch"} if events else {"get", "list", "watch"}
            if not verbs <= allowed:
                errors.append(f"{name_of(role)}: verbs {sorted(verbs - allowed)} on {groups} {res}")
    if not errors:
        print(f"  ok  project rules ({len(docs)} objects: one DaemonSet, no hostPort with maxSurge, "
              "downward-API env, read-only RBAC)")
    report(errors)


def mutate(args):
    """Broken copies of a rendered overlay, each of which a check must reject."""
    docs = load_all(args.file)
    os.makedirs(args.outdir, exist_ok=True)

    def write(name, changed):
        path = os.path.join(args.outdir, name)
        with open(path, "w") as f:
            yaml.safe_dump_all(changed, f, sort_keys=False)
        print(path)

    def daemonset(ds_docs):
        return next(d for d in ds_docs if d.get("kind") == "DaemonSet")

    # A typo in a DaemonSet field: kubernetes-validate --strict must refuse.
    typo = copy.deepcopy(docs)
    spec = daemonset(typo)["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    write("typo.yaml", typo)
    # A skipped checkov check without its annotation: checkov must fail.
    unskipped = copy.deepcopy(docs)
    notes = daemonset(unskipped)["metadata"]["annotations"]
    first = sorted(k for k in notes if k.startswith("checkov.io/skip"))[0]
    del notes[first]
    write("unskipped.yaml", unskipped)
    # A skip with its check id but without a reason: xtask must refuse it.
    bare = copy.deepcopy(docs)
    notes = daemonset(bare)["metadata"]["annotations"]
    notes[first] = notes[first].split("=", 1)[0]
    write("no-reason.yaml", bare)
    # A hostPort-declaring container: the project lint must refuse.
    ported = copy.deepcopy(docs)
    daemonset(ported)["spec"]["template"]["spec"]["containers"][0]["ports"] = [
        {"name": "metrics", "containerPort": 9464, "protocol": "TCP"}
    ]
    write("ports.yaml", ported)


def break_resource(args):
    docs = load_all(args.file)
    for d in docs:
        if "portcullis.dev/" in d.get("apiVersion", ""):
            d["spec"]["podSelecter"] = {}
            break
    else:
        sys.exit(f"check.py: no custom resource in {args.file}")
    with open(args.out, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    print(args.out)


def report(errors):
    for e in errors:
        print(f"  FAILED  {e}")
    if errors:
        sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("resources")
    r.add_argument("--crds", required=True)
    r.add_argument("-k", dest="k8s", action="append", required=True)
    r.add_argument("files", nargs="+")
    r.set_defaults(func=resources)
    l = sub.add_parser("lint")
    l.add_argument("file")
    l.set_defaults(func=lint)
    m = sub.add_parser("mutate")
    m.add_argument("file")
    m.add_argument("outdir")
    m.set_defaults(func=mutate)
    b = sub.add_parser("break-resource")
    b.add_argument("file")
    b.add_argument("out")
    b.set_defaults(func=break_resource)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
