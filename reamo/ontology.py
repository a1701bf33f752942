"""What the label sets imply beyond their names: which roles an event type has, which entity types a relation
connects, which relations read the same in both directions.

Candidate scoring (`reamo.decisions`) offers the model only answers that can be right: an argument only the roles
its event type has (the ACE 2005 role inventory for the ACE types, the caller's `Labels.event_roles` for others), a
relation only between entity types its label allows (MNRE's labels carry them: `/per/org/member_of`).
"""

from __future__ import annotations

from collections.abc import Sequence

# ACE 2005 event argument roles (without the Time-* roles, which M2E2 does not annotate), by event subtype.
ACE_EVENT_ROLES: dict[str, list[str]] = {
    "Life:Be-Born": ["Person", "Place"],
    "Life:Marry": ["Person", "Place"],
    "Life:Divorce": ["Person", "Place"],
    "Life:Injure": ["Agent", "Victim", "Instrument", "Place"],
    "Life:Die": ["Agent", "Victim", "Instrument", "Place"],
    "Movement:Transport": ["Agent", "Artifact", "Vehicle", "Origin", "Destination"],
    "Transaction:Transfer-Ownership": ["Buyer", "Seller", "Beneficiary", "Artifact", "Place"],
    "Transaction:Transfer-Money": ["Giver", "Recipient", "Beneficiary", "Place"],
    "Business:Start-Org": ["Agent", "Org", "Place"],
    "Business:Merge-Org": ["Org"],
    "Business:Declare-Bankruptcy": ["Org", "Place"],
    "Business:End-Org": ["Org", "Place"],
    "Conflict:Attack": ["Attacker", "Target", "Instrument", "Place"],
    "Conflict:Demonstrate": ["Entity", "Police", "Instrument", "Place"],
    "Contact:Meet": ["Entity", "Place"],
    "Contact:Phone-Write": ["Entity", "Place"],
    "Personnel:Start-Position": ["Person", "Entity", "Position", "Place"],
    "Personnel:End-Position": ["Person", "Entity", "Position", "Place"],
    "Personnel:Nominate": ["Person", "Agent", "Position"],
    "Personnel:Elect": ["Person", "Entity", "Position", "Place"],
    "Justice:Arrest-Jail": ["Person", "Agent", "Place"],
    "Justice:Release-Parole": ["Person", "Entity", "Place"],
    "Justice:Trial-Hearing": ["Defendant", "Prosecutor", "Adjudicator", "Place"],
    "Justice:Charge-Indict": ["Defendant", "Prosecutor", "Adjudicator", "Place"],
    "Justice:Sue": ["Plaintiff", "Defendant", "Adjudicator", "Place"],
    "Justice:Convict": ["Defendant", "Adjudicator", "Place"],
    "Justice:Sentence": ["Defendant", "Adjudicator", "Place"],
    "Justice:Fine": ["Entity", "Adjudicator", "Place"],
    "Justice:Execute": ["Person", "Agent", "Place"],
    "Justice:Extradite": ["Agent", "Person", "Destination", "Origin"],
    "Justice:Acquit": ["Defendant", "Adjudicator"],
    "Justice:Pardon": ["Defendant", "Adjudicator", "Place"],
    "Justice:Appeal": ["Plaintiff", "Adjudicator", "Place"],
}

# The entity types each ACE role's argument can have (ACE 2005 English Events Guidelines, with GPE/LOC targets of
# attacks and ORG artifacts as M2E2's train annotations have them: every M2E2 train argument fits this table).
# Roles not listed (Position, Crime, ...) take values, not entities: any type may be asked.
ACE_ENTITY_KINDS = frozenset({"PER", "ORG", "GPE", "LOC", "FAC", "VEH", "WEA", "VALUE"})
_ACTORS = frozenset({"PER", "ORG", "GPE"})
_PLACES = frozenset({"GPE", "LOC", "FAC"})
ACE_ROLE_ENTITY_TYPES: dict[str, frozenset[str]] = {
    **dict.fromkeys(["Agent", "Attacker", "Giver", "Recipient", "Beneficiary", "Buyer", "Seller", "Entity",
                     "Prosecutor", "Plaintiff", "Adjudicator", "Defendant"], _ACTORS),
    **dict.fromkeys(["Place", "Origin", "Destination"], _PLACES),
    "Person": frozenset({"PER"}),
    "Victim": frozenset({"PER"}),
    "Police": frozenset({"PER", "ORG"}),
    "Org": frozenset({"ORG"}),
    "Target": frozenset({"PER", "ORG", "GPE", "LOC", "FAC", "VEH", "WEA"}),
    "Artifact": frozenset({"PER", "ORG", "FAC", "VEH", "WEA"}),
    "Instrument": frozenset({"WEA", "VEH"}),
    "Vehicle": frozenset({"VEH"}),
}

# The entity-type letters of MNRE's relation labels (`/per/org/member_of`) in the GMNER entity types.
MNRE_TYPE_LETTERS: dict[str, str] = {"per": "PER", "org": "ORG", "loc": "LOC", "misc": "OTHER"}
# Relations that hold in both directions: one triple per unordered pair, written in text order (MNRE's gold
# writes 96-98% of them with the earlier mention first).
SYMMETRIC_RELATIONS = frozenset({"peer", "couple", "siblings", "neighbor", "alumi", "alternate_names",
                                 "org/alternate_names"})


def event_roles(event_type: str, given: dict[str, list[str]] | None = None) -> list[str]:
    """The roles an event type's arguments can take: the caller's, else ACE's, else none (matched ignoring case)."""
    for table in (given or {}, ACE_EVENT_ROLES):
        for name, roles in table.items():
            if name.casefold() == event_type.casefold():
                return list(roles)
    return []


def fitting_roles(event_type: str, entity_type: str | None, given: dict[str, list[str]] | None = None
                  ) -> list[str]:
    """The roles of `event_type` (`event_roles`) an entity of `entity_type` can fill: for ACE's own roles, those
    whose argument types (`ACE_ROLE_ENTITY_TYPES`) include it ("Baghdad" is never a death's Victim or an attack's
    Instrument); a caller's roles, or an entity type outside ACE's (a caller's own), are not narrowed."""
    roles = event_roles(event_type, given)
    kind = (entity_type or "").split(":")[0].strip().upper()
    caller_roles = any(name.casefold() == event_type.casefold() for name in (given or {}))
    if caller_roles or kind not in ACE_ENTITY_KINDS:
        return roles
    return [role for role in roles if kind in ACE_ROLE_ENTITY_TYPES.get(role, ACE_ENTITY_KINDS)]


def relation_signatures(relation_types: Sequence[str]) -> dict[str, tuple[str, str] | None]:
    """Relation name -> (head entity type, tail entity type) when its MNRE label says, else None (any types).

    Names are matched to MNRE labels by their full form (`/per/org/member_of`) or short name (`member_of`)."""
    from reamo.datasets import MNRE_SHORT_NAMES

    by_short = {short: full for full, short in MNRE_SHORT_NAMES.items()}
    out: dict[str, tuple[str, str] | None] = {}
    for name in relation_types:
        full = name if name in MNRE_SHORT_NAMES else by_short.get(name)
        parts = full.strip("/").split("/") if full else []
        if len(parts) == 3 and parts[0] in MNRE_TYPE_LETTERS and parts[1] in MNRE_TYPE_LETTERS:
            out[name] = (MNRE_TYPE_LETTERS[parts[0]], MNRE_TYPE_LETTERS[parts[1]])
        else:
            out[name] = None
    return out


def allowed_relations(relation_types: Sequence[str], head_type: str, tail_type: str) -> list[str]:
    """The relations whose signature admits (head_type, tail_type); relations without a signature always do."""
    allowed = []
    for name, signature in relation_signatures(relation_types).items():
        if signature is None or (signature[0].casefold() == head_type.casefold()
                                 and signature[1].casefold() == tail_type.casefold()):
            allowed.append(name)
    return allowed


def is_symmetric(relation: str) -> bool:
    return relation.rsplit("/", 1)[-1] in SYMMETRIC_RELATIONS or relation in SYMMETRIC_RELATIONS
