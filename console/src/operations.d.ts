export function operations(files: string[]): {
  operations: Record<string, string>;
  fragments: Record<string, string>;
};
