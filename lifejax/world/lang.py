"""Non-English pages (Spanish, French, German) about the company.

They restate company facts in another language, so a language filter that
drops them also drops (redundant) knowledge; every such page is labelled
`non_english` with its ISO code in `lang`.
"""

import random

from lifejax.world import facts as wf
from lifejax.world import text as wt

LANGS = ("es", "fr", "de")

_MONTHS = {
    "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio",
           "agosto", "septiembre", "octubre", "noviembre", "diciembre"),
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet",
           "août", "septembre", "octobre", "novembre", "décembre"),
    "de": ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli",
           "August", "September", "Oktober", "November", "Dezember"),
}

# Slots: {s} subject, {price}, {n} number, {month}, {year}, {v} a name.
_PRODUCT = {
    "es": ("El {s} cuesta {price} en nuestra tienda.",
           "El precio del {s} es de {price}.",
           "El {s} se puede devolver en un plazo de {refund} días.",
           "Los clientes tienen {refund} días para devolver el {s}.",
           "La garantía del {s} dura {warranty} meses.",
           "El {s} salió a la venta en {month} de {year}.",
           "El proveedor del {s} es {vendor}."),
    "fr": ("Le {s} coûte {price} dans notre boutique.",
           "Le prix du {s} est de {price}.",
           "Le {s} peut être retourné dans un délai de {refund} jours.",
           "Les clients ont {refund} jours pour renvoyer le {s}.",
           "La garantie du {s} dure {warranty} mois.",
           "Le {s} est sorti en {month} {year}.",
           "Le fournisseur du {s} est {vendor}."),
    "de": ("Das Produkt {s} kostet {price} in unserem Laden.",
           "Der Preis für das Produkt {s} beträgt {price}.",
           "Das Produkt {s} kann innerhalb von {refund} Tagen zurückgegeben "
           "werden.",
           "Die Garantie für das Produkt {s} gilt {warranty} Monate.",
           "Das Produkt {s} kam im {month} {year} auf den Markt.",
           "Der Lieferant für das Produkt {s} ist {vendor}."),
}
_EMPLOYEE = {
    "es": ("{s} trabaja en el departamento de {dept}.",
           "{s} forma parte del equipo de {dept} y trabaja en la oficina de "
           "{office}.",
           "La oficina de {office} es el lugar de trabajo de {s}."),
    "fr": ("{s} travaille dans le service {dept}.",
           "{s} fait partie de l'équipe {dept} et travaille au bureau de "
           "{office}.",
           "Le bureau de {office} est le lieu de travail de {s}."),
    "de": ("{s} arbeitet in der Abteilung {dept}.",
           "{s} gehört zum Team {dept} und arbeitet im Büro in {office}.",
           "Das Büro in {office} ist der Arbeitsplatz von {s}."),
}
_VENDOR = {
    "es": ("{s} tiene su sede en {city}.",
           "La empresa {s} envía sus productos desde {city}."),
    "fr": ("{s} a son siège à {city}.",
           "L'entreprise {s} expédie ses produits depuis {city}."),
    "de": ("{s} hat seinen Sitz in {city}.",
           "Die Firma {s} verschickt ihre Waren aus {city}."),
}
_FILLER = {
    "es": {
        "S": ["{subj} {verb} {obj} {when}.",
              "Si tiene alguna pregunta, {contact} {when}.",
              "En {company} creemos que {belief}.",
              "Cada semana {subj2} {verb} {obj} sin prisa.",
              "Gracias por confiar en nosotros desde hace tantos años."],
        "subj2": ["nuestro equipo", "el almacén", "la oficina central"],
        "subj": ["Nuestro equipo", "El servicio de atención al cliente",
                 "La tienda en línea", "El almacén", "La oficina central"],
        "verb": ["revisa", "prepara", "registra", "organiza", "envía"],
        "obj": ["los pedidos", "las cajas", "las devoluciones",
                "los paquetes", "las facturas"],
        "when": ["cada mañana", "todos los días", "antes del mediodía",
                 "durante la semana", "con mucho cuidado"],
        "contact": ["puede escribir a nuestro equipo",
                    "puede visitar la tienda", "puede llamar a la oficina"],
        "belief": ["un buen servicio es lo más importante",
                   "los clientes merecen respuestas claras",
                   "la calidad de los productos es esencial"],
    },
    "fr": {
        "S": ["{subj} {verb} {obj} {when}.",
              "Si vous avez une question, {contact} {when}.",
              "Chez {company}, nous pensons que {belief}.",
              "Chaque semaine, {subj2} {verb} {obj} du jour.",
              "Merci de votre confiance depuis toutes ces années."],
        "subj2": ["notre équipe", "l'entrepôt", "le siège"],
        "subj": ["Notre équipe", "Le service client", "La boutique en ligne",
                 "L'entrepôt", "Le siège"],
        "verb": ["vérifie", "prépare", "enregistre", "organise", "envoie"],
        "obj": ["les commandes", "les cartons", "les retours", "les colis",
                "les factures"],
        "when": ["chaque matin", "tous les jours", "avant midi",
                 "pendant la semaine", "avec beaucoup de soin"],
        "contact": ["vous pouvez écrire à notre équipe",
                    "vous pouvez passer à la boutique",
                    "vous pouvez appeler le bureau"],
        "belief": ["un bon service est le plus important",
                   "les clients méritent des réponses claires",
                   "la qualité des produits est essentielle"],
    },
    "de": {
        "S": ["{subj} {verb} {obj} {when}.",
              "Wenn Sie eine Frage haben, {contact} {when}.",
              "Bei {company} glauben wir, dass {belief}.",
              "Jede Woche {verb} {subj2} {obj} des Tages.",
              "Vielen Dank für Ihr Vertrauen seit so vielen Jahren."],
        "subj2": ["unser Team", "das Lager", "die Zentrale"],
        "subj": ["Unser Team", "Der Kundendienst", "Der Onlineshop",
                 "Das Lager", "Die Zentrale"],
        "verb": ["prüft", "sortiert", "zählt", "organisiert", "verschickt"],
        "obj": ["die Bestellungen", "die Kartons", "die Rücksendungen",
                "die Pakete", "die Rechnungen"],
        "when": ["jeden Morgen", "an jedem Tag", "vor dem Mittag",
                 "während der Woche", "mit großer Sorgfalt"],
        "contact": ["schreiben Sie bitte unserem Team",
                    "besuchen Sie bitte den Laden",
                    "rufen Sie bitte das Büro an"],
        "belief": ["guter Service das Wichtigste ist",
                   "Kunden klare Antworten verdienen",
                   "die Qualität der Produkte entscheidend ist"],
    },
}


def non_english_page(facts: wf.Facts, rng: random.Random,
                     lang: str | None = None) -> tuple[str, str]:
  """Returns (ISO language code, text) of a page restating company facts."""
  lang = lang or rng.choice(LANGS)
  if lang not in LANGS:
    raise ValueError(f"unsupported language {lang!r}; expected one of {LANGS}")
  sentences = []
  for p in rng.sample(facts.products, min(2, len(facts.products))):
    slots = {"s": p.name, "price": p.price, "refund": str(p.refund_days),
             "warranty": str(p.warranty_months), "vendor": p.vendor,
             "month": _MONTHS[lang][p.launch_month - 1],
             "year": str(p.launch_year)}
    for t in rng.sample(_PRODUCT[lang], 3):
      sentences.append(wt.fill(t, slots))
  e = rng.choice(facts.employees)
  sentences.append(wt.fill(rng.choice(_EMPLOYEE[lang]), {
      "s": e.name, "dept": e.department, "office": e.office}))
  v = rng.choice(facts.vendors)
  sentences.append(wt.fill(rng.choice(_VENDOR[lang]),
                           {"s": v.name, "city": v.city}))
  grammar = _FILLER[lang]
  sentences += wt.sentences_from(grammar, rng, rng.randint(3, 5),
                                 {"company": facts.company}, set(sentences))
  rng.shuffle(sentences)
  return lang, wt.paragraphs(sentences, rng)
