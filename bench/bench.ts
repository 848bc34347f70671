/** Benchmark entry point (placeholder until the benchmark issue lands). */
export async function benchMain(_argv: string[]): Promise<number> {
  process.stderr.write("monopiped bench: not implemented yet\n");
  return 1;
}
