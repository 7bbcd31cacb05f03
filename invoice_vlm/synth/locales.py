"""Locales: the words, dates, numbers and currencies an invoice is printed with."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


@dataclass(frozen=True)
class Locale:
    code: str
    currency: str  # ISO 4217 code
    symbol: str
    symbol_before: bool
    thousands: str
    decimal: str
    date_formats: tuple[str, ...]  # strftime patterns; %B is this locale's month name, {day} the unpadded day
    months: tuple[str, ...]
    tax_rates: tuple[str, ...]  # percent, as printed
    page_size: str  # "A4" or "Letter"
    words: dict[str, str]
    products: tuple[str, ...]
    notes: tuple[str, ...]
    percent: str = "%"  # French and German set a space before the percent sign

    def w(self, key: str) -> str:
        return self.words[key]


def format_amount(value: Decimal, loc: Locale, style: str = "symbol") -> str:
    """``value`` as this locale prints it; ``style`` is ``symbol`` (1.234,50 €), ``code`` (EUR 1.234,50 /
    1.234,50 EUR) or ``plain`` (1.234,50)."""
    q = value.quantize(CENT, rounding=ROUND_HALF_UP)
    sign = "-" if q < 0 else ""
    whole, frac = f"{abs(q):.2f}".split(".")
    groups = []
    while len(whole) > 3:
        groups.insert(0, whole[-3:])
        whole = whole[:-3]
    groups.insert(0, whole)
    number = f"{sign}{loc.thousands.join(groups)}{loc.decimal}{frac}"
    if style == "plain":
        return number
    if style == "code":
        return f"{loc.currency} {number}" if loc.symbol_before else f"{number} {loc.currency}"
    if loc.symbol_before:
        return f"{loc.symbol}{number}" if loc.symbol in "$£" else f"{loc.symbol} {number}"
    return f"{number} {loc.symbol}"


def format_date(day: dt.date, loc: Locale, pattern: str) -> str:
    # strftime's %B follows the C locale; month names come from the Locale so output never depends on the OS.
    # {day}: the day without a leading zero, as long dates print it
    out = day.strftime(pattern.replace("%B", "{month}"))
    return out.replace("{month}", loc.months[day.month - 1]).replace("{day}", str(day.day))


_EN = dict(
    invoice="INVOICE", number="Invoice No.", date="Invoice Date", due="Due Date", bill_to="Bill To",
    ship_to="Ship To", from_="From", description="Description", qty="Qty", unit_price="Unit Price",
    amount="Amount", subtotal="Subtotal", tax="Tax", total="Total", thanks="Thank you for your business!",
    payment="Payment due within {days} days.", page="Page {i} of {n}", continued="Continued on next page",
    bank="Bank", iban="IBAN", bic="SWIFT/BIC", vat_id="Tax ID", phone="Phone", email="Email", web="Web",
    customer_no="Customer No.", order_no="Order No.", notes="Notes", amount_due="Amount Due",
    remit="Please detach and return this part with your payment", reference="Reference", item_no="Item",
    dear="Dear Sir or Madam,", intro="we hereby invoice the following goods and services:",
    day="Date", paid="PAID", account="Account holder", terms="Payment terms", regards="Kind regards",
)
_EN_PRODUCTS = (
    "Consulting services", "Website hosting", "Office chairs", "Printer paper A4", "Software licence",
    "Maintenance contract", "Laptop stand", "Design work", "Cloud storage", "Travel expenses", "Training session",
    "USB-C cable", "Project management", "Coffee beans", "Desk lamp", "Network switch", "Cleaning service",
    "Annual support plan", "Shipping and handling", "Monitor 27 inch", "Copywriting", "Data migration",
    "Spare parts", "On-site installation", "Photography", "Wireless keyboard", "Legal advice", "Catering",
)
_EN_NOTES = ("Please quote the invoice number with your payment.", "Goods remain our property until paid in full.",
             "Questions about this invoice? Contact our accounts team.", "Late payments may incur interest.")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December")

LOCALES: dict[str, Locale] = {
    "en_US": Locale("en_US", "USD", "$", True, ",", ".", ("%m/%d/%Y", "%B {day}, %Y", "%Y-%m-%d"), _EN_MONTHS,
                    ("7", "8", "8.25"), "Letter", {**_EN, "vat_id": "EIN"}, _EN_PRODUCTS, _EN_NOTES),
    "en_GB": Locale("en_GB", "GBP", "£", True, ",", ".", ("%d/%m/%Y", "{day} %B %Y", "%d.%m.%Y"), _EN_MONTHS,
                    ("20", "5"), "A4", {**_EN, "tax": "VAT", "total": "Total due", "vat_id": "VAT Reg. No.",
                                        "bic": "Sort code", "iban": "IBAN"}, _EN_PRODUCTS, _EN_NOTES),
    "de_DE": Locale("de_DE", "EUR", "€", False, ".", ",", ("%d.%m.%Y", "{day}. %B %Y", "%Y-%m-%d"), (
        "Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September", "Oktober", "November",
        "Dezember"), ("19", "7"), "A4", dict(
        invoice="RECHNUNG", number="Rechnungsnr.", date="Rechnungsdatum", due="Fällig am",
        bill_to="Rechnungsempfänger", ship_to="Lieferadresse", from_="Absender", description="Beschreibung",
        qty="Menge", unit_price="Einzelpreis", amount="Betrag", subtotal="Nettobetrag", tax="MwSt.",
        total="Gesamtbetrag", thanks="Vielen Dank für Ihren Auftrag!", payment="Zahlbar innerhalb von {days} Tagen.",
        page="Seite {i} von {n}", continued="Fortsetzung auf der nächsten Seite", bank="Bank", iban="IBAN",
        bic="BIC", vat_id="USt-IdNr.", phone="Telefon", email="E-Mail", web="Web", customer_no="Kundennr.",
        order_no="Auftragsnr.", notes="Hinweise", amount_due="Zu zahlender Betrag",
        remit="Bitte abtrennen und mit Ihrer Zahlung zurücksenden", reference="Verwendungszweck", item_no="Pos.",
        dear="Sehr geehrte Damen und Herren,", intro="wir erlauben uns, folgende Leistungen zu berechnen:",
        day="Datum", paid="BEZAHLT", account="Kontoinhaber", terms="Zahlungsbedingungen", regards="Mit freundlichen Grüßen"),
        ("Beratungsleistung", "Webhosting", "Bürostühle", "Druckerpapier A4", "Softwarelizenz", "Wartungsvertrag",
         "Schulung", "Reisekosten", "Montage vor Ort", "Grafikdesign", "Straßenreinigung", "Kühlschrank",
         "Projektleitung", "Kaffeebohnen", "Schreibtischlampe", "Netzwerkkabel", "Gebäudereinigung",
         "Jahreswartung", "Versandkosten", "Übersetzung", "Ersatzteile", "Fotografie", "Rechtsberatung"),
        ("Bitte geben Sie bei Zahlung die Rechnungsnummer an.", "Die Ware bleibt bis zur Bezahlung unser Eigentum.",
         "Leistungsdatum entspricht dem Rechnungsdatum."), " %"),
    "fr_FR": Locale("fr_FR", "EUR", "€", False, " ", ",", ("%d/%m/%Y", "{day} %B %Y"), (
        "janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre", "novembre",
        "décembre"), ("20", "10", "5,5"), "A4", dict(
        invoice="FACTURE", number="N° de facture", date="Date de facture", due="Échéance", bill_to="Facturé à",
        ship_to="Livré à", from_="Émetteur", description="Désignation", qty="Qté", unit_price="Prix unitaire HT",
        amount="Montant HT", subtotal="Total HT", tax="TVA", total="Total TTC", thanks="Merci pour votre confiance.",
        payment="Paiement à {days} jours.", page="Page {i} sur {n}", continued="Suite page suivante", bank="Banque",
        iban="IBAN", bic="BIC", vat_id="N° TVA intracom.", phone="Tél.", email="E-mail", web="Site",
        customer_no="N° client", order_no="N° de commande", notes="Remarques", amount_due="Montant dû",
        remit="Coupon à joindre à votre règlement", reference="Référence", item_no="Réf.",
        dear="Madame, Monsieur,", intro="veuillez trouver ci-dessous le détail de notre facturation :",
        day="Date", paid="PAYÉ", account="Titulaire", terms="Conditions de paiement", regards="Cordialement"),
        ("Prestation de conseil", "Hébergement web", "Chaises de bureau", "Papier A4", "Licence logiciel",
         "Contrat de maintenance", "Formation", "Frais de déplacement", "Création graphique", "Café en grains",
         "Lampe de bureau", "Gestion de projet", "Câble USB-C", "Réparation", "Livraison", "Nettoyage des locaux",
         "Pièces détachées", "Traduction", "Installation sur site", "Abonnement annuel"),
        ("Pénalités de retard : trois fois le taux d'intérêt légal.", "Pas d'escompte pour paiement anticipé.",
         "Merci d'indiquer le numéro de facture lors du règlement."), " %"),
    "es_ES": Locale("es_ES", "EUR", "€", False, ".", ",", ("%d/%m/%Y", "{day} de %B de %Y", "%d-%m-%Y"), (
        "enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
        "noviembre", "diciembre"), ("21", "10", "4"), "A4", dict(
        invoice="FACTURA", number="Nº de factura", date="Fecha", due="Vencimiento", bill_to="Facturar a",
        ship_to="Enviar a", from_="Emisor", description="Descripción", qty="Cant.", unit_price="Precio unitario",
        amount="Importe", subtotal="Base imponible", tax="IVA", total="Total", thanks="Gracias por su confianza.",
        payment="Pago a {days} días.", page="Página {i} de {n}", continued="Continúa en la página siguiente",
        bank="Banco", iban="IBAN", bic="BIC", vat_id="NIF", phone="Teléfono", email="Correo", web="Web",
        customer_no="Nº de cliente", order_no="Nº de pedido", notes="Observaciones", amount_due="Importe a pagar",
        remit="Recorte y devuelva esta parte con su pago", reference="Referencia", item_no="Ref.",
        dear="Estimado cliente:", intro="le facturamos los siguientes productos y servicios:", day="Fecha", paid="PAGADO",
        account="Titular", terms="Forma de pago", regards="Atentamente"),
        ("Servicios de consultoría", "Alojamiento web", "Sillas de oficina", "Papel A4", "Licencia de software",
         "Contrato de mantenimiento", "Formación", "Gastos de viaje", "Diseño gráfico", "Café en grano",
         "Lámpara de escritorio", "Gestión de proyectos", "Cable USB-C", "Reparación", "Envío", "Limpieza",
         "Piezas de repuesto", "Traducción", "Instalación", "Suscripción anual"),
        ("Indique el número de factura en la transferencia.", "Factura exenta de retención.",
         "Para cualquier consulta contacte con administración.")),
    "it_IT": Locale("it_IT", "EUR", "€", True, ".", ",", ("%d/%m/%Y", "{day} %B %Y", "%d.%m.%Y"), (
        "gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno", "luglio", "agosto", "settembre", "ottobre",
        "novembre", "dicembre"), ("22", "10", "4"), "A4", dict(
        invoice="FATTURA", number="Fattura n.", date="Data", due="Scadenza", bill_to="Destinatario",
        ship_to="Luogo di consegna", from_="Mittente", description="Descrizione", qty="Q.tà",
        unit_price="Prezzo unitario", amount="Importo", subtotal="Imponibile", tax="IVA", total="Totale",
        thanks="Grazie per la fiducia.", payment="Pagamento a {days} giorni.", page="Pagina {i} di {n}",
        continued="Segue alla pagina successiva", bank="Banca", iban="IBAN", bic="BIC", vat_id="P. IVA",
        phone="Tel.", email="E-mail", web="Sito", customer_no="Cod. cliente", order_no="Ordine n.", notes="Note",
        amount_due="Importo dovuto", remit="Staccare e restituire con il pagamento", reference="Causale",
        item_no="Cod.", dear="Gentile cliente,", intro="con la presente fatturiamo quanto segue:", day="Data", paid="PAGATO",
        account="Intestatario", terms="Modalità di pagamento", regards="Cordiali saluti"),
        ("Consulenza", "Hosting web", "Sedie da ufficio", "Carta A4", "Licenza software", "Manutenzione",
         "Formazione", "Spese di viaggio", "Progettazione grafica", "Caffè in grani", "Lampada da scrivania",
         "Gestione progetto", "Cavo USB-C", "Riparazione", "Spedizione", "Pulizia uffici", "Ricambi",
         "Traduzione", "Installazione", "Abbonamento annuale"),
        ("Indicare il numero di fattura nella causale.", "Operazione soggetta a IVA ordinaria.",
         "Per informazioni contattare l'amministrazione.")),
    "nl_NL": Locale("nl_NL", "EUR", "€", True, ".", ",", ("%d-%m-%Y", "{day} %B %Y"), (
        "januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus", "september", "oktober",
        "november", "december"), ("21", "9"), "A4", dict(
        invoice="FACTUUR", number="Factuurnummer", date="Factuurdatum", due="Vervaldatum", bill_to="Factuur aan",
        ship_to="Afleveradres", from_="Van", description="Omschrijving", qty="Aantal", unit_price="Prijs per stuk",
        amount="Bedrag", subtotal="Subtotaal", tax="BTW", total="Totaal", thanks="Bedankt voor uw opdracht!",
        payment="Betaling binnen {days} dagen.", page="Pagina {i} van {n}", continued="Vervolg op volgende pagina",
        bank="Bank", iban="IBAN", bic="BIC", vat_id="Btw-nr.", phone="Telefoon", email="E-mail", web="Web",
        customer_no="Klantnummer", order_no="Ordernummer", notes="Opmerkingen", amount_due="Te betalen",
        remit="Knip af en stuur mee met uw betaling", reference="Kenmerk", item_no="Art.",
        dear="Geachte heer, mevrouw,", intro="hierbij brengen wij de volgende werkzaamheden in rekening:",
        day="Datum", paid="BETAALD", account="Rekeninghouder", terms="Betalingsvoorwaarden", regards="Met vriendelijke groet"),
        ("Advieswerk", "Webhosting", "Bureaustoelen", "Printpapier A4", "Softwarelicentie", "Onderhoudscontract",
         "Training", "Reiskosten", "Grafisch ontwerp", "Koffiebonen", "Bureaulamp", "Projectbeheer",
         "USB-C-kabel", "Reparatie", "Verzending", "Schoonmaak", "Onderdelen", "Vertaling", "Installatie"),
        ("Vermeld bij betaling altijd het factuurnummer.", "Op al onze leveringen zijn de algemene voorwaarden "
         "van toepassing.", "Vragen? Neem contact op met onze administratie.")),
}
