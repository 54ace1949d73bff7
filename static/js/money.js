// Amounts in the deployment's currency as users read them, in their locale: to the cent, and
// to a hundredth of a cent below one cent (a few minutes of a sandbox cost less than a cent).

export function moneyFormat(currency) {
  const formats = {};
  return (value) => {
    const amount = Number(value);
    const places = amount !== 0 && Math.abs(amount) < 0.01 ? 4 : 2;
    formats[places] ??= currencyFormat(currency, places);
    return formats[places].format(amount);
  };
}

export function currencyFormat(currency, places) {
  return new Intl.NumberFormat(undefined, {
    style: "currency",
    currency,
    minimumFractionDigits: places,
    maximumFractionDigits: places,
  });
}
